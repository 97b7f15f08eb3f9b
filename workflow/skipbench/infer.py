"""Stage `infer`: greedy completions of every task for one skip variant, resumable.

Work is cut into batches of `generation.batch_size` prompts; each finished batch is
checkpointed as one JSON file (and, when tracing, its routing trace as Parquet) under
cache_dir/<key>/, where key hashes the model files, the rule (with its calibration
values), the engine settings and the generation settings. A killed run
restarts with the batches that are missing and recomputes none of the others; if
nothing is missing no engine is started.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from skipbench.benchmarks import Task
from skipbench.calibrate import bind_calibration
from skipbench.engines import ENGINES, device_name, open_engine
from skipbench.io import read_table, stable_hash, write_json, write_jsonl, write_table
from skipbench.strategies import SkipRule
from skipbench.traces import SampleTrace, trace_table
from skipbench.traffic import TRACE_SCHEMA
from skipbench_kernels.integration import KernelChoice

log = logging.getLogger(__name__)

# Stop strings for completing a HumanEval-style function body: the next top-level
# statement starts (Codex paper set, spelled with the trailing space/paren).
HUMANEVAL_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
DEFAULT_BATCH = 8

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
    ("batch_size", pa.int32()),  # generation.batch_size
    ("experts_per_token", pa.float64()),  # kept routed experts per token, mean over all processed tokens (prompt and generated) and MoE layers
    ("dense_experts_per_token", pa.int32()),  # the model's num_experts_per_tok
    ("moe_layers", pa.int32()),
    ("resumed_samples", pa.int32()),  # samples taken from the checkpoint cache, not generated in this run
])


def model_fingerprint(model_dir: Path) -> dict:
    """Identity of a checkpoint without reading its weights: small files by content, big by size and mtime."""
    files = {}
    for f in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        st = f.stat()
        rel = str(f.relative_to(model_dir))
        files[rel] = f.read_text() if st.st_size < (1 << 20) and f.suffix in (".json", ".txt", ".model") else [st.st_size, st.st_mtime_ns]
    return files


def _batches(todo: list[Task], size: int) -> list[list[Task]]:
    return [todo[i : i + size] for i in range(0, len(todo), size)]


def _load_done(run_dir: Path) -> list[dict]:
    """Finished batch records in run_dir (unreadable partial files cannot exist: writes are atomic)."""
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob("batch-*.json"))]


def run_infer(model_dir: Path, tasks: list[Task], variant: str, variant_cfg: dict, engine_cfg: dict,
              generation_cfg: dict, samples_path: Path, generations_path: Path, summary_path: Path,
              cache_dir: Path, trace_path: Path | None = None, calibration_path: Path | None = None,
              kernel: KernelChoice | None = None) -> None:
    """Generate completions for `tasks` under one skip variant; write samples, generations,
    summary and (trace_path) the routing trace. Variants that need calibration statistics
    read them from calibration_path (calibrate.CALIBRATION_SCHEMA). `kernel`: the
    build_kernels stage's choice (engines.py: where the skip kernel runs)."""
    model_dir, cache_dir = Path(model_dir), Path(cache_dir)
    rule = SkipRule.from_config(variant_cfg)
    if rule.needs_calibration:
        rule = bind_calibration(rule, read_table(calibration_path) if calibration_path else None)
    tracing = trace_path is not None
    if engine_cfg["name"] not in ENGINES:
        raise ValueError(f"unknown engine {engine_cfg['name']!r}; known: {sorted(ENGINES)}")
    max_new = int(generation_cfg["max_new_tokens"])
    seed = int(generation_cfg.get("seed", 0))
    stop = list(generation_cfg.get("stop", HUMANEVAL_STOP))
    batch_size = int(generation_cfg.get("batch_size", DEFAULT_BATCH))
    key = stable_hash(dict(model=model_fingerprint(model_dir), rule=rule.to_json(), engine=engine_cfg,
                           max_new_tokens=max_new, seed=seed, stop=stop, batch_size=batch_size, trace=tracing,
                           kernel=kernel.backend if kernel else None))
    run_dir = cache_dir / f"infer-{key}"
    run_dir.mkdir(parents=True, exist_ok=True)

    done = _load_done(run_dir)
    have = {(s["task_id"], s["prompt_sha"]) for b in done for s in b["samples"]}
    todo = [t for t in tasks if (t.task_id, stable_hash(t.prompt)) not in have]
    resumed = len(tasks) - len(todo)
    log.info("infer %s: %d tasks, %d from cache %s, %d to generate", variant, len(tasks), resumed, run_dir, len(todo))

    fresh = []
    if todo:
        t0 = time.perf_counter()
        engine = open_engine(model_dir, rule, engine_cfg, seed, cache_dir, tracing, kernel)
        log.info("%s %s started in %.1f s", engine.name, engine.version, time.perf_counter() - t0)
        try:
            for batch in tqdm(_batches(todo, batch_size), desc=f"infer {variant}", unit="batch"):
                t0 = time.perf_counter()
                gens = engine.generate([t.prompt for t in batch], max_new, stop, seed)
                wall = time.perf_counter() - t0
                batch_key = stable_hash([t.task_id for t in batch])
                if tracing:  # written before the batch record: a record always has its trace
                    routing = engine.take_trace(gens)  # before take_counts, whose reset drops traces
                    write_table(run_dir / f"trace-{batch_key}.parquet", trace_table(
                        [SampleTrace(t.task_id, 0, r.layers, r.ids, r.keep) for t, r in zip(batch, routing)]), TRACE_SCHEMA)
                counts = engine.take_counts()
                record = dict(
                    wall_s=wall, batch_size=len(batch), kept=counts.kept, token_layers=counts.token_layers,
                    moe_layers=counts.moe_layers, engine_version=engine.version, skip_path=engine.skip_path,
                    expert_kernel=engine.expert_kernel,
                    samples=[dict(task_id=t.task_id, prompt_sha=stable_hash(t.prompt), prompt=t.prompt, sample=0,
                                  completion=g.completion, token_ids=g.token_ids, prompt_tokens=g.prompt_tokens,
                                  finish_reason=g.finish_reason) for t, g in zip(batch, gens)],
                )
                record["trace"] = f"trace-{batch_key}.parquet" if tracing else None
                write_json(run_dir / f"batch-{batch_key}.json", record)
                fresh.append(record)
        finally:
            engine.close()
    _write_outputs(tasks, variant, rule, engine_cfg, done + fresh, resumed, model_dir,
                   samples_path, generations_path, summary_path)
    if tracing:
        _write_trace(tasks, done + fresh, run_dir, trace_path)


def _write_trace(tasks, batches, run_dir, trace_path) -> None:
    """The batches' traces concatenated in task order."""
    import pyarrow.compute as pc

    files = sorted({b["trace"] for b in batches})
    table = pa.concat_tables([read_table(run_dir / f, TRACE_SCHEMA) for f in files])
    wanted = [t.task_id for t in tasks]
    table = table.filter(pc.is_in(table["task_id"], pa.array(wanted)))
    order = pc.index_in(table["task_id"], pa.array(wanted))
    table = table.take(pc.sort_indices(pa.table({"o": order, "s": table["sample_id"], "p": table["position"],
                                                 "l": table["layer"]}), [("o", "ascending"), ("s", "ascending"),
                                                                          ("p", "ascending"), ("l", "ascending")]))
    write_table(trace_path, table, TRACE_SCHEMA)


def _write_outputs(tasks, variant, rule, engine_cfg, batches, resumed, model_dir,
                   samples_path, generations_path, summary_path) -> None:
    by_task = {}
    for b in batches:
        for s in b["samples"]:
            by_task[(s["task_id"], s["prompt_sha"])] = (b, s)
    ordered = [by_task[(t.task_id, stable_hash(t.prompt))] for t in tasks]
    write_jsonl(samples_path, [dict(task_id=s["task_id"], solution=s["prompt"] + s["completion"]) for _, s in ordered])
    rows = [dict(variant=variant, task_id=s["task_id"], sample=s["sample"], completion=s["completion"],
                 token_ids=s["token_ids"], prompt_tokens=s["prompt_tokens"], tokens_generated=len(s["token_ids"]),
                 finish_reason=s["finish_reason"], wall_s=b["wall_s"], batch_size=b["batch_size"]) for b, s in ordered]
    write_table(generations_path, rows, GENERATIONS_SCHEMA)

    used = {id(b): b for b, _ in ordered}.values()  # batches of this task list only
    wall = sum(b["wall_s"] for b in used)
    out_tokens = sum(r["tokens_generated"] for r in rows)
    token_layers = sum(b["token_layers"] for b in used)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    first = next(iter(used), None)
    summary = dict(
        variant=variant, strategy=rule.strategy, params=json.dumps(rule.params(), sort_keys=True),
        engine=engine_cfg["name"], engine_version=first["engine_version"] if first else "",
        device=device_name(), dtype=str(engine_cfg.get("dtype", "")),
        skip_path=first["skip_path"] if first else "none", expert_kernel=first["expert_kernel"] if first else "",
        samples=len(rows),
        prompt_tokens=sum(r["prompt_tokens"] for r in rows), output_tokens=out_tokens, wall_s=wall,
        tokens_per_s=out_tokens / wall if wall > 0 else float("nan"),
        batch_size=max((b["batch_size"] for b in used), default=0),
        experts_per_token=sum(b["kept"] for b in used) / token_layers if token_layers else float("nan"),
        dense_experts_per_token=int(config["num_experts_per_tok"]),
        moe_layers=max((b["moe_layers"] for b in used), default=0), resumed_samples=resumed,
    )
    write_table(summary_path, [summary], INFER_SUMMARY_SCHEMA)
    log.info("infer %s: %d samples, %.1f tok/s, %.2f experts/token (dense %d)", variant, len(rows),
             summary["tokens_per_s"], summary["experts_per_token"], summary["dense_experts_per_token"])
