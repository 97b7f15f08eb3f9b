"""Stage 1, `checkpoint`: a DeepSeek-V3 checkpoint in the official release layout.

Two sources: `synthetic` builds a tiny model offline (optionally memorising the
benchmark's canonical solutions) and writes it exactly as DeepSeek ships V3: FP8 e4m3
weights with fp32 128x128 block scales, sharded safetensors, index, config.json.
`huggingface` downloads a pinned revision. Both write a manifest (file, bytes, sha256).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import torch
from safetensors.torch import save_file

from skipbench.benchmarks.tasks import Task
from skipbench.model.fp8 import QUANTIZATION_CONFIG, SCALE_SUFFIX, dequantize_fp8_blocks, is_fp8_weight, quantize_fp8_blocks
from skipbench.io import atomic_dir, stable_hash, write_json, write_table
from skipbench.model.layout import CONFIG_NAME, MANIFEST_SCHEMA, manifest_rows, shard_name, write_index
from skipbench.model import tinymodel

log = logging.getLogger(__name__)

# One row per checkpoint built (a summary; the loss curve sits in a list column).
TRAINING_SCHEMA = pa.schema([
    ("source", pa.string()),                      # synthetic | huggingface
    ("seed", pa.int64()),                         # init and training seed; null for downloads
    ("parameters", pa.int64()),                   # model parameter count; null for downloads
    ("memorise_enabled", pa.bool_()),             # whether training was asked for
    ("steps", pa.int64()),                        # optimizer steps taken (0 without training)
    ("target_loss", pa.float64()),                # stop once the loss reaches this; null without training
    ("final_loss", pa.float64()),                 # mean token cross-entropy (prompt + solution + EOS), last step
    ("loss_curve", pa.list_(pa.float64())),       # loss per step
    ("seconds", pa.float64()),                    # training wall time, greedy checks included
    ("tasks_total", pa.int64()),                  # tasks trained on (and checked)
    ("tasks_reproduced", pa.int64()),             # greedy completion == canonical solution, fp32 weights
    ("tasks_reproduced_fp8", pa.int64()),         # same after the FP8 block round trip of the written checkpoint
    ("reproduced_task_ids", pa.list_(pa.string())),  # task ids reproduced after the FP8 round trip
    ("memorised", pa.bool_()),                    # every task reproduced after the FP8 round trip
    ("note", pa.string()),                        # what this row means, in words
])

_COMMIT = re.compile(r"[0-9a-f]{40}")


def release_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """High-precision release-named weights -> the release's dtypes, in release order:
    FP8 + fp32 `weight_scale_inv` for Linear weights, fp32 router bias, bf16 for the rest."""
    out = {}
    for name in sorted(state, key=_release_order):
        t = state[name]
        if is_fp8_weight(name):
            q, s = quantize_fp8_blocks(t)
            out[name], out[name + SCALE_SUFFIX] = q, s
        elif name.endswith("e_score_correction_bias"):
            out[name] = t.float().contiguous()
        else:
            out[name] = t.to(torch.bfloat16).contiguous()
    return out


def dequantized(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a fp8_to_bf16 conversion of `tensors` holds: the bf16 weights a server loads."""
    return {
        name: dequantize_fp8_blocks(t, tensors[name + SCALE_SUFFIX]) if t.dtype == torch.float8_e4m3fn else t
        for name, t in tensors.items()
        if not name.endswith(SCALE_SUFFIX)
    }


def _release_order(name: str) -> tuple:
    # Natural order (layer 2 before layer 10), lm_head last as in the release. re.split with
    # a group alternates text and digits, so parts at one position always share a type.
    parts = re.split(r"(\d+)", name)
    return name.startswith("lm_head"), tuple(int(p) if p.isdigit() else p for p in parts)


def assign_shards(tensors: dict[str, torch.Tensor], n: int) -> dict[str, str]:
    """Split tensors (in order) into n shards of about equal bytes, a scale next to its
    weight, except one scale pushed into the following shard, as happens in the release,
    so readers must find scales through the index."""
    names = list(tensors)
    if n < 1 or n > len(names):
        raise ValueError(f"cannot split {len(names)} tensors into {n} shards")
    sizes = {k: t.numel() * t.element_size() for k, t in tensors.items()}
    target = sum(sizes.values()) / n
    shard, done, idx = {}, 0, 1
    for k in names:
        if k.endswith(SCALE_SUFFIX):
            shard[k] = shard[k.removesuffix(SCALE_SUFFIX)]
        else:
            # Open the next shard once this one holds its share, leaving enough for the rest.
            if idx < n and done >= target * idx:
                idx += 1
            shard[k] = idx
        done += sizes[k]
    if len(set(shard.values())) != n:
        raise ValueError(f"tensors too few or too uneven for {n} shards")
    if n > 1:
        first = [k for k in names if shard[k] == 1 and k + SCALE_SUFFIX in shard]
        if not first:
            raise ValueError("no FP8 weight in the first shard to split from its scale")
        shard[first[-1] + SCALE_SUFFIX] = 2
    return {k: shard_name(i, n) for k, i in shard.items()}


def write_release(out_dir: Path, tensors: dict[str, torch.Tensor], config: dict, tokenizer, shards: int) -> None:
    """Shards, index, config.json (with the FP8 quantization_config), generation config, tokenizer."""
    placement = assign_shards(tensors, shards)
    for i in range(1, shards + 1):
        name = shard_name(i, shards)
        part = {k: tensors[k] for k in tensors if placement[k] == name}
        save_file(part, out_dir / name, metadata={"format": "pt"})
    write_index(out_dir, placement, sum(t.numel() * t.element_size() for t in tensors.values()))
    write_json(out_dir / CONFIG_NAME, {**config, "quantization_config": dict(QUANTIZATION_CONFIG)})
    # Greedy by default: the demo model is meant to be decoded deterministically.
    write_json(out_dir / "generation_config.json",
               {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "do_sample": False})
    tokenizer.save_pretrained(out_dir)


def _reproduced(model, tokenizer, tasks: Sequence[Task], max_new_tokens: int) -> list[str]:
    texts = tinymodel.greedy_completions(model, tokenizer, [t.prompt for t in tasks], max_new_tokens)
    return [t.task_id for t, text in zip(tasks, texts) if text == t.canonical_solution]


def synthetic_checkpoint(synth: dict, tasks: Sequence[Task], out_dir: Path, resume: Path | None = None) -> dict:
    """Build, optionally memorise, and write the tiny model into `out_dir`; returns the training row.
    Deterministic (tinymodel.deterministic): the same files whatever the caller's thread count.
    `resume`: training state saved every few steps, continued by a rerun after a kill."""
    with tinymodel.deterministic():
        return _synthetic_checkpoint(synth, tasks, out_dir, resume)


def _synthetic_checkpoint(synth: dict, tasks: Sequence[Task], out_dir: Path, resume: Path | None) -> dict:
    texts = [t.prompt + t.canonical_solution for t in tasks]
    tokenizer = tinymodel.train_tokenizer(texts, synth["vocab_size"])
    if len(tokenizer) > synth["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than vocab_size {synth['vocab_size']}")
    config = tinymodel.release_config(synth["architecture"], synth["vocab_size"])
    model = tinymodel.build_model(config, synth["seed"])
    tinymodel.set_selection_bias(model, synth.get("selection_bias_std", 0.0), synth["seed"] + 1)
    mem = synth.get("memorise", {})
    row = {"source": "synthetic", "seed": synth["seed"], "parameters": sum(p.numel() for p in model.parameters()),
           "memorise_enabled": bool(mem.get("enabled")), "steps": 0, "target_loss": None, "final_loss": None,
           "loss_curve": [], "seconds": 0.0, "tasks_total": len(tasks), "tasks_reproduced": None,
           "tasks_reproduced_fp8": None, "reproduced_task_ids": [], "memorised": False,
           "note": "random weights: memorise.enabled is false"}
    if mem.get("enabled"):
        if not tasks:
            raise ValueError("memorise.enabled needs at least one task")
        seqs = [tinymodel.encode_pair(tokenizer, t.prompt, t.canonical_solution) for t in tasks]
        budget = max(len(ids) - n for ids, n in seqs) + 8  # longest solution + EOS, with slack
        train = tinymodel.memorise(
            model, seqs, mem["lr"], mem["max_steps"], mem["target_loss"], pad_id=tokenizer.eos_token_id,
            until=lambda: len(_reproduced(model, tokenizer, tasks, budget)) == len(tasks), resume=resume,
        )
        row.update(steps=train.steps, target_loss=mem["target_loss"], final_loss=train.losses[-1],
                   loss_curve=train.losses, seconds=train.seconds,
                   tasks_reproduced=len(_reproduced(model, tokenizer, tasks, budget)))
    tensors = release_tensors(tinymodel.release_state_dict(model))
    if mem.get("enabled"):
        # Check the weights as written, after FP8 quantisation, as a bf16 server loads them.
        tinymodel.load_release_state_dict(model, dequantized(tensors))
        ids = _reproduced(model, tokenizer, tasks, budget)
        row.update(tasks_reproduced_fp8=len(ids), reproduced_task_ids=ids, memorised=len(ids) == len(tasks),
                   note="memorisation demo: trained on prompt + canonical solution of these tasks")
        log.info("greedy reproduces %d/%d solutions (fp32 weights), %d/%d after the FP8 round trip",
                 row["tasks_reproduced"], len(tasks), len(ids), len(tasks))
        if not row["memorised"]:
            log.warning("not every task memorised: raise memorise.max_steps or lower target_loss")
    write_release(out_dir, tensors, config, tokenizer, synth["shards"])
    return row


def download_checkpoint(hf: dict, out_dir: Path) -> None:
    """snapshot_download of a pinned revision. The staging folder survives a failure, so a
    rerun resumes the files already fetched; it becomes `out_dir` when complete."""
    from huggingface_hub import snapshot_download

    if not hf.get("revision"):
        raise ValueError("model.huggingface.revision is required: pin a commit for reproducible results")
    if not _COMMIT.fullmatch(hf["revision"]):
        log.warning("revision %r is not a commit hash: the files behind it can change", hf["revision"])
    out_dir = Path(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.download"
    log.info("downloading %s@%s into %s", hf["repo_id"], hf["revision"], staging)
    try:
        snapshot_download(
            repo_id=hf["repo_id"], revision=hf["revision"], allow_patterns=hf.get("allow_patterns"),
            local_dir=staging, endpoint=hf.get("endpoint") or os.environ.get("HF_ENDPOINT"),
        )
    except Exception as e:
        raise RuntimeError(
            f"download of {hf['repo_id']}@{hf['revision']} failed ({type(e).__name__}: {e}); "
            f"files already fetched stay in {staging}: rerun to resume"
        ) from e
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # download bookkeeping, not checkpoint
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)


def run_checkpoint(
    model_cfg: dict, tasks: Sequence[Task], out_dir: Path, manifest_path: Path, training_report_path: Path
) -> None:
    """Stage entry point: checkpoint directory, its manifest, and the training report."""
    out_dir = Path(out_dir)
    source = model_cfg["source"]
    if source == "synthetic":
        # Outside the staging folder (removed after a kill), keyed by what training depends on.
        key = stable_hash([model_cfg["synthetic"], [(t.task_id, t.prompt, t.canonical_solution) for t in tasks]])
        resume = out_dir.parent / f".{out_dir.name}.train-{key}.pt"
        with atomic_dir(out_dir) as tmp:
            row = synthetic_checkpoint(model_cfg["synthetic"], tasks, tmp, resume)
        for state in out_dir.parent.glob(f".{out_dir.name}.train-*.pt"):
            state.unlink()
    elif source == "huggingface":
        download_checkpoint(model_cfg["huggingface"], out_dir)
        row = {"source": "huggingface", "seed": None, "parameters": None, "memorise_enabled": False,
               "steps": 0, "target_loss": None, "final_loss": None, "loss_curve": [], "seconds": 0.0,
               "tasks_total": 0, "tasks_reproduced": None, "tasks_reproduced_fp8": None,
               "reproduced_task_ids": [], "memorised": False, "note": "downloaded checkpoint: no training"}
    else:
        raise ValueError(f"unknown model.source {source!r}")
    write_table(manifest_path, manifest_rows(out_dir), MANIFEST_SCHEMA)
    write_table(training_report_path, [row], TRAINING_SCHEMA)
