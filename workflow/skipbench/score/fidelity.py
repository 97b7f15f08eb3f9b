"""Stage `fidelity`: teacher-forced drift of each variant from the dense model.

Generation-level fidelity (score.py: identical completions, first differing token) is
all-or-nothing per completion and depends on its length. Here every variant reads the
dense model's OWN greedy completions (prompt + completion, teacher-forced, one forward
per batch) and at every decode position its next-token distribution is compared with
dense's: KL(dense || variant) in nats, averaged over all decode positions of all
completions, and top-1 agreement (the variant's argmax equals dense's). A position's
context is always dense's, so an early divergence does not contaminate the later ones.

Noise floor: the same comparison between dense in fp32 and dense in the serving dtype
(bf16 by default: what vLLM runs). Serving in bf16 is a change everyone accepts as
harmless, so a variant whose KL sits below it drifts less than that; a floor from fp32
numerics alone (a second fp32 run, ~1e-9 nats) would put every variant above it. The row
has variant "dense" and reference "dense in <dtype>"; every variant's table repeats it.

Engine: the transformers oracle (oracle.py; sentinel skip path), which returns full
logits; in fp32 on CPU for the tiny model. Every rule but batch_aware decides per token,
so one forward over prompt + completion (batches of `batch_size`, padding included) gives
the positions generation would. batch_aware (OEA) decides from the tokens of one forward,
so it is measured as it generated (batch_cache.GenerationSettings.for_rule: at the deployment
batch): at batch 1 teacher-forced decode, the prompt in one forward, then one completion
token per forward (KV cache), dense measured the same way. Above batch 1 its decode steps
would hold several sequences that finish at different times: not replayed here, so its
row is n/a with that reason in `method` (never the whole sequence taken as one batch).
decode_only rules skip at the completion's positions only, as in generation.
T positions, V vocabulary.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import torch

from skipbench.benchmarks.tasks import Task
from skipbench.infer.calibrate import variant_rule
from skipbench.io import read_table, write_table
from skipbench.skip.strategies import SkipRule

log = logging.getLogger(__name__)

FIDELITY_SCHEMA = pa.schema([
    ("benchmark", pa.string()),
    ("variant", pa.string()),  # "dense": the noise floor (dense in fp32 against dense in the serving dtype)
    ("reference", pa.string()),  # what the variant is compared with: dense (same method), or dense in bf16 (the floor)
    ("sequences", pa.int32()),  # dense completions scored
    ("positions", pa.int64()),  # decode positions (completion tokens) over all of them
    ("kl_mean", pa.float64()),  # mean over positions of KL(dense || variant), nats
    ("kl_p99", pa.float64()),  # 99th percentile of the same
    ("top1_agree", pa.float64()),  # share of positions whose argmax equals dense's
    ("engine", pa.string()),  # transformers <version>, dtype, device
    ("method", pa.string()),  # how the positions were computed, or "n/a: <reason>" (kl_mean null)
])  # fmt: skip

WHOLE = "teacher-forced, prompt + completion in one forward, batch {}"
DECODE = "teacher-forced decode, one completion token per forward, batch 1 (deployment batch)"


@torch.no_grad()
def completion_logprobs(model, seqs: list[tuple[list[int], list[int]]], batch_size: int,
                        gates=()) -> list[torch.Tensor]:
    """Per sequence (prompt ids, completion ids): log-probabilities [N, V] (fp32, CPU) the model
    gives each completion position, teacher-forced. Right padding: a causal model's earlier
    positions do not see it. `gates` (oracle SkipGates) learn which rows are decode rows
    (completion tokens, as in generation) for decode_only rules."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        width = max(len(p) + len(c) for p, c in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, (p, c) in enumerate(chunk):
            ids[b, : len(p) + len(c)] = torch.tensor(p + c)
            mask[b, : len(p) + len(c)] = 1
        decode = torch.zeros_like(mask, dtype=torch.bool)  # [B, W]
        for b, (p, c) in enumerate(chunk):
            decode[b, len(p) : len(p) + len(c)] = True
        for _, gate in gates:
            gate.decode_rows = decode.flatten()
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # [B, W, V]
        for b, (p, c) in enumerate(chunk):
            # position j predicts token j + 1: completion token t sits at len(p) + t
            out.append(logits[b, len(p) - 1 : len(p) + len(c) - 1].float().log_softmax(-1).cpu())
    for _, gate in gates:
        gate.decode_rows = None
    return out


@torch.no_grad()
def decode_logprobs(model, seqs: list[tuple[list[int], list[int]]], gates=()) -> list[torch.Tensor]:
    """completion_logprobs at batch 1 as decode runs: the prompt in one forward, then each
    completion token alone with the KV cache, so a rule that couples the tokens of a
    forward (batch_aware) sees what it saw in generation."""
    device = next(model.parameters()).device
    out = []
    for p, c in seqs:
        for _, gate in gates:
            gate.decode_rows = torch.zeros(len(p), dtype=torch.bool)
        step = model(input_ids=torch.tensor([p], device=device), use_cache=True)
        rows = [step.logits[0, -1]]  # [V] predicts completion token 0
        for _, gate in gates:
            gate.decode_rows = torch.ones(1, dtype=torch.bool)
        for token in c[:-1]:
            step = model(input_ids=torch.tensor([[token]], device=device), past_key_values=step.past_key_values,
                         use_cache=True)
            rows.append(step.logits[0, -1])
        out.append(torch.stack(rows).float().log_softmax(-1).cpu())  # [N, V]
    for _, gate in gates:
        gate.decode_rows = None
    return out


def compare(reference: list[torch.Tensor], other: list[torch.Tensor]) -> dict:
    """KL(reference || other) per position and top-1 agreement, pooled over all positions."""
    if not reference:
        return dict(positions=0, kl_mean=None, kl_p99=None, top1_agree=None)
    ref, oth = torch.cat(reference), torch.cat(other)  # [T, V]
    kl = (ref.exp() * (ref - oth)).sum(-1).clamp_min(0.0)  # [T]; float rounding can dip below 0
    agree = (ref.argmax(-1) == oth.argmax(-1)).double()
    return dict(positions=int(kl.numel()), kl_mean=float(kl.double().mean()),
                kl_p99=float(torch.quantile(kl.double(), 0.99)), top1_agree=float(agree.mean()))


def dense_sequences(tokenizer, tasks: list[Task], generations) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of dense's generations (GENERATIONS_SCHEMA rows), task order."""
    by_task = {(r["task_id"], r["sample"]): r for r in generations}
    seqs = []
    for t in tasks:
        row = by_task.get((t.task_id, 0))
        if row is None:
            raise ValueError(f"task {t.task_id}: no dense generation to score")
        prompt = tokenizer(t.prompt).input_ids
        if len(prompt) != row["prompt_tokens"]:
            raise ValueError(f"task {t.task_id}: prompt is {len(prompt)} tokens here, {row['prompt_tokens']} at generation")
        if row["token_ids"]:
            seqs.append((prompt, list(row["token_ids"])))
    return seqs


def run_fidelity(model_dir: Path, tasks: list[Task], benchmark: str, dense_generations: Path, variant: str,
                 variant_cfg: dict, out_path: Path, batch_size: int = 8, calibration_path: Path | None = None,
                 noise_floor: Path | None = None, dtype: torch.dtype = torch.float32,
                 serving_dtype: str = "bfloat16", deployment_batch: int | None = None) -> None:
    """FIDELITY_SCHEMA rows of one variant (one job per variant: an added variant runs only its own).

    Without `noise_floor`, the variant is dense and its table is the noise floor (dense in
    `dtype` against dense in `serving_dtype`, engine.dtype; bf16 where that is not a half
    precision). Otherwise `noise_floor` is dense's table: its row comes first, then the
    variant's own (none for a variant whose rule is dense), so each table is complete on
    its own. `deployment_batch`: the batch
    batch_aware generated at (report.deployment_batch; None: `batch_size`, as infer)."""
    import transformers
    from transformers import AutoTokenizer

    from skipbench.infer.oracle import load_oracle

    rule = variant_rule(variant_cfg, calibration_path)
    if noise_floor is None and not rule.is_dense:
        raise ValueError(f"fidelity of {variant}: a variant that skips is compared with dense's noise floor table")
    floor = read_table(noise_floor, FIDELITY_SCHEMA).to_pylist() if noise_floor is not None else []
    if floor and rule.is_dense:  # another name for dense: nothing of its own to measure
        write_table(out_path, floor, FIDELITY_SCHEMA)
        return
    tok = AutoTokenizer.from_pretrained(model_dir)
    seqs = dense_sequences(tok, tasks, read_table(dense_generations).to_pylist())
    engine = f"transformers {transformers.__version__}, {str(dtype).removeprefix('torch.')}, cpu"
    base = dict(benchmark=benchmark, sequences=len(seqs), engine=engine)
    model, gates = load_oracle(model_dir, SkipRule("dense"), dtype)

    def run(rule: SkipRule, decode: bool = False) -> list[torch.Tensor]:
        for _, gate in gates:
            gate.rule = rule
        return decode_logprobs(model, seqs, gates) if decode else completion_logprobs(model, seqs, batch_size, gates)

    if rule.is_dense:
        name = serving_dtype if serving_dtype in ("bfloat16", "float16") else "bfloat16"
        served, _ = load_oracle(model_dir, SkipRule("dense"), getattr(torch, name))
        rows = [base | dict(variant=variant, reference=f"dense in {name}", method=WHOLE.format(batch_size))
                | compare(run(SkipRule("dense")), completion_logprobs(served, seqs, batch_size))]
    elif rule.strategy == "batch_aware" and (deployment_batch or batch_size) > 1:
        at = deployment_batch or batch_size
        rows = floor + [base | dict(variant=variant, reference="dense", positions=0, method=(
            f"n/a: batch_aware decides from a decode step's {at} sequences, which finish at different "
            "times; only batch 1 is replayed teacher-forced"))]
    else:
        decode = rule.strategy == "batch_aware"  # at batch 1: one token per forward, as generated
        method = DECODE if decode else WHOLE.format(batch_size)
        rows = floor + [base | dict(variant=variant, reference="dense")
                        | compare(run(SkipRule("dense"), decode), run(rule, decode)) | dict(method=method)]
    log.info("%s/%s: KL %.4g nats, top-1 agreement %.3f over %d positions (%s)", benchmark, variant,
             rows[-1].get("kl_mean") or 0, rows[-1].get("top1_agree") or 0, rows[-1]["positions"], rows[-1]["method"])
    write_table(out_path, rows, FIDELITY_SCHEMA)
