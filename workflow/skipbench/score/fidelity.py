"""Stage `fidelity`: teacher-forced drift of each variant from the dense model.

Generation-level fidelity (score.py: identical completions, first differing token) is
all-or-nothing per completion and depends on its length. Here every variant reads the
dense model's OWN greedy completions (prompt + completion, teacher-forced, one forward
per batch) and at every decode position its next-token distribution is compared with
dense's: KL(dense || variant) in nats, averaged over all decode positions of all
completions, and top-1 agreement (the variant's argmax equals dense's). A position's
context is always dense's, so an early divergence does not contaminate the later ones.

Noise floor: dense against itself, run a second time with another batching (one sequence
per forward instead of `batch_size`): what "identical" means numerically for this
engine, dtype and device (padding and batch shape change the reduction order). The row
has variant "dense" and reference "dense, batch 1"; every variant's table repeats it.

Engine: the transformers oracle (oracle.py; sentinel skip path), which returns full
logits; in fp32 on CPU for the tiny model. batch_aware couples the tokens of one forward
call: here those are the prompt + completion tokens of the batch (padding included),
not a decode step's batch, so its numbers are indicative only. decode_only rules skip at
the completion's positions only, as in generation. T positions, V vocabulary.
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
    ("variant", pa.string()),  # "dense": the noise floor (dense against a second dense run)
    ("reference", pa.string()),  # what the variant is compared with
    ("sequences", pa.int32()),  # dense completions scored
    ("positions", pa.int64()),  # decode positions (completion tokens) over all of them
    ("kl_mean", pa.float64()),  # mean over positions of KL(dense || variant), nats
    ("kl_p99", pa.float64()),  # 99th percentile of the same
    ("top1_agree", pa.float64()),  # share of positions whose argmax equals dense's
    ("engine", pa.string()),  # transformers <version>, dtype, device
])  # fmt: skip

NOISE_BATCH = 1  # the noise floor's second dense run: one sequence per forward


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
                 noise_floor: Path | None = None, dtype: torch.dtype = torch.float32) -> None:
    """FIDELITY_SCHEMA rows of one variant (one job per variant: an added variant runs only its own).

    Without `noise_floor`, the variant is dense and its table is the noise floor. Otherwise
    `noise_floor` is dense's table: its row comes first, then the variant's own (none for
    a variant whose rule is dense), so each table is complete on its own."""
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
    model, gates = load_oracle(model_dir, SkipRule("dense"), dtype)
    tok = AutoTokenizer.from_pretrained(model_dir)
    seqs = dense_sequences(tok, tasks, read_table(dense_generations).to_pylist())
    engine = f"transformers {transformers.__version__}, {str(dtype).removeprefix('torch.')}, cpu"

    def run(rule: SkipRule, batch: int) -> list[torch.Tensor]:
        for _, gate in gates:
            gate.rule = rule
        return completion_logprobs(model, seqs, batch, gates)

    dense = run(SkipRule("dense"), batch_size)
    base = dict(benchmark=benchmark, sequences=len(seqs), engine=engine)
    if rule.is_dense:
        rows = [base | dict(variant=variant, reference=f"dense, batch {NOISE_BATCH}")
                | compare(dense, run(SkipRule("dense"), NOISE_BATCH))]
    else:
        rows = floor + [base | dict(variant=variant, reference=f"dense, batch {batch_size}") | compare(dense, run(rule, batch_size))]
    log.info("%s/%s: KL %.4g nats, top-1 agreement %.3f over %d positions", benchmark, variant,
             rows[-1]["kl_mean"] or 0, rows[-1]["top1_agree"] or 0, rows[-1]["positions"])
    write_table(out_path, rows, FIDELITY_SCHEMA)
