"""Stage `infer`: greedy completions of every task per skip variant, resumable.

Work is cut into batches of `generation.batch_size` prompts (batch_aware: for_rule); each finished batch is
checkpointed as one JSON file (and, when tracing, its routing trace as Parquet) in the
variant's cache (batch_cache.py: <variant cache dir>/infer-<key>/, keyed by the model
files, the rule, the engine and the generation settings). A killed run restarts with the
batches that are missing and recomputes none of the others; if nothing is missing no
engine is started.

Two ways to fill those caches:
- run_infer: one variant, its own engine (engines whose rule cannot change after start:
  vLLM with CUDA graphs), then its output files.
- generate_variants: every variant of a benchmark, one engine start when the engine can
  switch rules (engines.swaps_rules): between variants it only swaps the rule.
  write_infer_outputs then writes each variant's files from its cache, starting no engine.
A variant's cache key does not depend on which of the two generated it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pyarrow as pa
from skipbench.progress import track

from skipbench.benchmarks.tasks import Task
from skipbench.infer.batch_cache import GenerationSettings, VariantCache, open_cache, save_batch
from skipbench.infer.calibrate import variant_rule
from skipbench.infer.engines import ENGINES, device_name, open_engine, swaps_rules
from skipbench.config_check import check_variants_against_checkpoint
from skipbench.benchmarks.prompts import program_of
from skipbench.infer.traces import TRACE_SCHEMA, SampleTrace, trace_table, write_batch_traces
from skipbench.io import stable_hash, write_jsonl, write_table
from skipbench.skip.strategies import SkipRule
from skipbench_kernels.integration import KernelChoice

log = logging.getLogger(__name__)

# One row per generated sample.
GENERATIONS_SCHEMA = pa.schema([
    ("variant", pa.string()),  # variant name from config (e.g. "top2")
    ("task_id", pa.string()),  # benchmark task id (e.g. "HumanEval/0")
    ("sample", pa.int32()),  # sample index within the task (greedy: always 0)
    ("completion", pa.string()),  # generated text after the prompt, stop string excluded
    ("token_ids", pa.list_(pa.int32())),  # generated token ids, for fidelity vs dense
    ("prompt_tokens", pa.int32()),  # prompt length in tokens
    ("tokens_generated", pa.int32()),  # len(token_ids)
    ("finish_reason", pa.string()),  # "stop" (EOS or stop string) or "length"
    ("wall_s", pa.float64()),  # wall time of the batch this sample ran in (batched concurrently)
    ("batch_size", pa.int32()),  # prompts in that batch
])

# One row per variant.
INFER_SUMMARY_SCHEMA = pa.schema([
    ("variant", pa.string()),
    ("strategy", pa.string()),  # SkipRule.strategy
    ("params", pa.string()),  # SkipRule parameters as JSON (renormalise included)
    ("engine", pa.string()),  # "vllm" or "transformers"
    ("engine_version", pa.string()),
    ("device", pa.string()),  # cuda:<name> or cpu:<arch>x<cores>
    ("dtype", pa.string()),
    ("skip_path", pa.string()),  # none (dense), weight0 (skipped slot weight 0, still computed), sentinel or skip_kernel (not computed)
    ("expert_kernel", pa.string()),  # what computed the routed experts: vllm, skipbench-triton, transformers-eager
    ("samples", pa.int32()),
    ("prompt_tokens", pa.int64()),  # summed over samples
    ("output_tokens", pa.int64()),  # summed over samples
    ("wall_s", pa.float64()),  # generation wall time, summed over batches (engine start excluded)
    ("tokens_per_s", pa.float64()),  # output_tokens / wall_s at this batch size
    ("batch_size", pa.int32()),  # prompts per engine call: generation.batch_size, batch_aware: report.deployment_batch
    ("routed_per_decode_token", pa.float64()),  # kept routed experts per decode token (generated, fed back) and MoE layer, at batch_size
    ("routed_per_prompt_token", pa.float64()),  # the same over prompt tokens (prefill rows)
    ("top_p_cap_binds", pa.float64()),  # top_p: share of token-layers whose rule over all E wanted more than K experts; else null
    ("top_p_uncapped_experts", pa.float64()),  # top_p: mean experts that rule wanted per token-layer (before the cap at K); else null
    ("dense_experts_per_token", pa.int32()),  # the model's num_experts_per_tok
    ("moe_layers", pa.int32()),
    ("resumed_samples", pa.int32()),  # samples taken from the checkpoint cache, not generated in this run
    ("prompt_protocol", pa.string()),  # generation.prompt: completion | chat (skipbench.benchmarks.prompts)
])


# One row per variant of a benchmark: how the shared-engine job `generate` filled its cache.
GENERATE_SCHEMA = pa.schema([
    ("variant", pa.string()),
    ("rule", pa.string()),  # SkipRule JSON (calibration values included)
    ("cache", pa.string()),  # the variant's batch cache directory
    ("samples", pa.int32()),  # tasks of the benchmark
    ("resumed_samples", pa.int32()),  # already in the cache: not generated again
    ("generated_samples", pa.int32()),  # generated by this job
    ("engine_start", pa.int32()),  # which engine start of this job generated them (0, 1, ...); -1: none needed
    ("engine_start_s", pa.float64()),  # seconds that engine took to start (NaN: none needed)
    ("wall_s", pa.float64()),  # generation wall time of this variant in this job
])


def _batches(todo: list[Task], size: int) -> list[list[Task]]:
    return [todo[i : i + size] for i in range(0, len(todo), size)]


def _check_engine(engine_cfg: dict) -> None:
    if engine_cfg["name"] not in ENGINES:
        raise ValueError(f"unknown engine {engine_cfg['name']!r}; known: {sorted(ENGINES)}")


def _start(model_dir: Path, rule: SkipRule, engine_cfg: dict, gen: GenerationSettings, cache_dir: Path,
           tracing: bool, kernel: KernelChoice | None):
    """(engine, seconds its start took)."""
    t0 = time.perf_counter()
    engine = open_engine(model_dir, rule, engine_cfg, gen.seed, cache_dir, tracing, kernel)
    seconds = time.perf_counter() - t0
    log.info("%s %s started in %.1f s", engine.name, engine.version, seconds)
    return engine, seconds


def generate_missing(engine, cache: VariantCache, gen: GenerationSettings, tracing: bool) -> list[dict]:
    """Generate cache.todo batch by batch with `engine` (already running cache.rule) and
    gen.for_rule(cache.rule); each batch is checkpointed as soon as it is done. Returns the new batch records."""
    gen, fresh = gen.for_rule(cache.rule), []
    for batch in track(_batches(cache.todo, gen.batch_size), desc=f"infer {cache.variant}", unit="batch"):
        t0 = time.perf_counter()
        gens = engine.generate([t.prompt for t in batch], gen.max_new_tokens, gen.stop, gen.seed)
        wall = time.perf_counter() - t0
        batch_key = stable_hash([t.task_id for t in batch])
        if tracing:  # written before the batch record: a record always has its trace
            routing = engine.take_trace(gens)  # before take_counts, whose reset drops traces
            write_table(cache.run_dir / f"trace-{batch_key}.parquet", trace_table(
                [SampleTrace(t.task_id, 0, r.layers, r.ids, r.keep, r.weights) for t, r in zip(batch, routing)]), TRACE_SCHEMA)
        counts = engine.take_counts()
        record = dict(
            wall_s=wall, batch_size=len(batch), kept=counts.kept, token_layers=counts.token_layers,
            decode_kept=counts.decode_kept, decode_token_layers=counts.decode_token_layers, moe_layers=counts.moe_layers,
            capped=counts.capped, uncapped=counts.uncapped, engine_version=engine.version, skip_path=engine.skip_path,
            expert_kernel=engine.expert_kernel,
            samples=[dict(task_id=t.task_id, prompt_sha=stable_hash(t.prompt), prompt=t.prompt, sample=0,
                          completion=g.completion, token_ids=g.token_ids, prompt_tokens=g.prompt_tokens,
                          finish_reason=g.finish_reason) for t, g in zip(batch, gens)],
        )
        record["trace"] = f"trace-{batch_key}.parquet" if tracing else None
        save_batch(cache.run_dir, batch_key, record)
        fresh.append(record)
    return fresh


def run_infer(model_dir: Path, tasks: list[Task], variant: str, variant_cfg: dict, engine_cfg: dict,
              generation_cfg: dict, samples_path: Path, generations_path: Path, summary_path: Path,
              cache_dir: Path, trace_path: Path | None = None, calibration_path: Path | None = None,
              kernel: KernelChoice | None = None, deployment_batch: int | None = None) -> None:
    """Generate completions for `tasks` under one skip variant in an engine of its own (if
    any are missing from the cache); write samples, generations, summary and (trace_path)
    the routing trace. Variants that need calibration statistics read them from
    calibration_path (calibrate.CALIBRATION_SCHEMA). `kernel`: the build_kernels stage's
    choice (engines.py: where the skip kernel runs); deployment_batch: see for_rule."""
    model_dir, cache_dir = Path(model_dir), Path(cache_dir)
    _check_engine(engine_cfg)
    check_variants_against_checkpoint({variant: variant_cfg}, model_dir)  # before any engine start
    gen = GenerationSettings.from_config(generation_cfg, deployment_batch)
    tracing = trace_path is not None
    cache = open_cache(model_dir, tasks, variant, variant_rule(variant_cfg, calibration_path), engine_cfg, gen,
                       cache_dir, tracing, kernel)
    fresh = []
    if cache.todo:
        engine, _ = _start(model_dir, cache.rule, engine_cfg, gen, cache_dir, tracing, kernel)
        try:
            fresh = generate_missing(engine, cache, gen, tracing)
        finally:
            engine.close()
    _write_variant(tasks, cache, cache.done + fresh, engine_cfg, model_dir, samples_path, generations_path,
                   summary_path, trace_path)


def write_infer_outputs(model_dir: Path, tasks: list[Task], variant: str, variant_cfg: dict, engine_cfg: dict,
                        generation_cfg: dict, samples_path: Path, generations_path: Path, summary_path: Path,
                        cache_dir: Path, trace_path: Path | None = None,
                        calibration_path: Path | None = None, kernel: KernelChoice | None = None, deployment_batch: int | None = None) -> None:
    """run_infer's outputs from a cache that generate_variants filled; starts no engine.

    The summary's resumed_samples counts the samples generate_variants resumed (from an
    earlier, killed job), so it reads as it would after run_infer."""
    model_dir = Path(model_dir)
    gen = GenerationSettings.from_config(generation_cfg, deployment_batch)
    tracing = trace_path is not None
    cache = open_cache(model_dir, tasks, variant, variant_rule(variant_cfg, calibration_path), engine_cfg, gen,
                       Path(cache_dir), tracing, kernel)
    if cache.todo:
        raise RuntimeError(f"infer {variant}: {len(cache.todo)} of {len(tasks)} samples are missing from "
                           f"{cache.run_dir}; the shared-engine job generates them: rerun it "
                           f"(snakemake -R generate)")
    fresh_job = cache.generated_by_last_job()
    _write_variant(tasks, cache, cache.done, engine_cfg, model_dir, samples_path, generations_path, summary_path,
                   trace_path, resumed=len(tasks) - fresh_job)


def generate_variants(model_dir: Path, tasks: list[Task], variants: dict[str, dict], engine_cfg: dict,
                      generation_cfg: dict, cache_dir: Path, report_path: Path, tracing: bool = False,
                      calibration_path: Path | None = None, kernel: KernelChoice | None = None, deployment_batch: int | None = None) -> pa.Table:
    """Fill the batch cache of every variant (cache_dir/<variant>/infer-<key>, as run_infer
    with cache_dir/<variant>) and write one GENERATE_SCHEMA row per variant to report_path.

    An engine that can switch rules (engines.swaps_rules) is started once, with the first
    variant that has work, and switched to each next one; otherwise each variant gets an
    engine start of its own, one after the other. Variants are taken in the given order.
    """
    model_dir, cache_dir = Path(model_dir), Path(cache_dir)
    _check_engine(engine_cfg)
    check_variants_against_checkpoint(variants, model_dir)  # a downloaded model: before any engine start
    gen = GenerationSettings.from_config(generation_cfg, deployment_batch)
    caches = [open_cache(model_dir, tasks, name, variant_rule(cfg, calibration_path), engine_cfg, gen,
                         cache_dir / name, tracing, kernel) for name, cfg in variants.items()]
    shared = swaps_rules(engine_cfg)
    rows, engine, starts, start_s = [], None, -1, math.nan
    try:
        for cache in caches:
            row = dict(variant=cache.variant, rule=cache.rule.to_json(), cache=str(cache.run_dir), samples=len(tasks),
                       resumed_samples=cache.resumed, generated_samples=len(cache.todo), engine_start=-1,
                       engine_start_s=math.nan, wall_s=0.0)
            if cache.todo:
                if engine is not None and shared:
                    engine.set_rule(cache.rule)
                else:  # the first start, or an engine that cannot switch rules: a fresh start
                    if engine is not None:
                        engine.close()
                        engine = None  # not closed twice should the next start fail
                    engine, start_s = _start(model_dir, cache.rule, engine_cfg, gen, cache_dir, tracing, kernel)
                    starts += 1
                t0 = time.perf_counter()
                generate_missing(engine, cache, gen, tracing)
                row |= dict(engine_start=starts, engine_start_s=start_s, wall_s=time.perf_counter() - t0)
            # what write_infer_outputs reports as generated (not resumed) by this job
            cache.note_generated(len(cache.todo))
            rows.append(row)
    finally:
        if engine is not None:
            engine.close()
    log.info("generate: %d variants, %d generated with %d engine start(s)", len(caches),
             sum(1 for r in rows if r["generated_samples"]), starts + 1)
    return write_table(report_path, rows, GENERATE_SCHEMA)


def _write_variant(tasks, cache: VariantCache, batches, engine_cfg, model_dir, samples_path, generations_path,
                   summary_path, trace_path, resumed: int | None = None) -> None:
    _write_outputs(tasks, cache.variant, cache.rule, engine_cfg, batches,
                   cache.resumed if resumed is None else resumed, model_dir, samples_path, generations_path,
                   summary_path)
    if trace_path is not None:
        write_batch_traces([t.task_id for t in tasks], [cache.run_dir / b["trace"] for b in batches], trace_path)


def _write_outputs(tasks, variant, rule, engine_cfg, batches, resumed, model_dir,
                   samples_path, generations_path, summary_path) -> None:
    by_task = {}
    for b in batches:
        for s in b["samples"]:
            by_task[(s["task_id"], s["prompt_sha"])] = (b, s)
    ordered = [by_task[(t.task_id, stable_hash(t.prompt))] for t in tasks]
    write_jsonl(samples_path, [dict(task_id=s["task_id"], solution=program_of(t, s["completion"]))
                               for t, (_, s) in zip(tasks, ordered)])  # fmt: skip
    rows = [dict(variant=variant, task_id=s["task_id"], sample=s["sample"], completion=s["completion"],
                 token_ids=s["token_ids"], prompt_tokens=s["prompt_tokens"], tokens_generated=len(s["token_ids"]),
                 finish_reason=s["finish_reason"], wall_s=b["wall_s"], batch_size=b["batch_size"]) for b, s in ordered]
    write_table(generations_path, rows, GENERATIONS_SCHEMA)

    used = {id(b): b for b, _ in ordered}.values()  # batches of this task list only
    wall, out_tokens = sum(b["wall_s"] for b in used), sum(r["tokens_generated"] for r in rows)
    kept, token_layers = sum(b["kept"] for b in used), sum(b["token_layers"] for b in used)
    decode_kept, decode_layers = sum(b["decode_kept"] for b in used), sum(b["decode_token_layers"] for b in used)
    first, top_p = next(iter(used), None), rule.strategy == "top_p" and token_layers > 0
    summary = dict(
        variant=variant, strategy=rule.strategy, params=json.dumps(rule.params(), sort_keys=True),
        engine=engine_cfg["name"], engine_version=first["engine_version"] if first else "",
        device=device_name(), dtype=str(engine_cfg.get("dtype", "")),
        skip_path=first["skip_path"] if first else "none", expert_kernel=first.get("expert_kernel") if first else None,
        samples=len(rows), prompt_tokens=sum(r["prompt_tokens"] for r in rows), output_tokens=out_tokens, wall_s=wall,
        tokens_per_s=out_tokens / wall if wall > 0 else float("nan"),
        batch_size=max((b["batch_size"] for b in used), default=0),
        routed_per_decode_token=decode_kept / decode_layers if decode_layers else math.nan,
        routed_per_prompt_token=(kept - decode_kept) / (token_layers - decode_layers) if token_layers > decode_layers else math.nan,
        top_p_cap_binds=sum(b["capped"] for b in used) / token_layers if top_p else None,
        top_p_uncapped_experts=sum(b["uncapped"] for b in used) / token_layers if top_p else None,
        dense_experts_per_token=int(json.loads((Path(model_dir) / "config.json").read_text())["num_experts_per_tok"]),
        moe_layers=max((b["moe_layers"] for b in used), default=0), resumed_samples=resumed,
        prompt_protocol=tasks[0].protocol if tasks else "completion",
    )
    write_table(summary_path, [summary], INFER_SUMMARY_SCHEMA)
    log.info("infer %s: %d samples, %.1f tok/s, %.2f routed experts per decode token (dense %d)", variant, len(rows),
             summary["tokens_per_s"], summary["routed_per_decode_token"], summary["dense_experts_per_token"])
