"""DeepSeek-V3's FP8 weight format and the checkpoint converter (fp8 <-> bf16).

Format: a Linear weight W [N, K] is stored as e4m3 `weight` [N, K] plus fp32
`weight_scale_inv` [ceil(N/128), ceil(K/128)], one scale per 128x128 block (edge blocks
are ragged), W = weight * scale_inv blockwise. scale_inv = amax(|block|) / 448, so the
block's largest value lands on e4m3's largest finite value.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Literal

import pyarrow as pa
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from skipbench.progress import track

from skipbench.io import atomic_dir, write_json, write_table
from skipbench.model.layout import CONFIG_NAME, DTYPE_BYTES, copy_side_files, read_index, write_index

log = logging.getLogger(__name__)

BLOCK = 128
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
SCALE_SUFFIX = "_scale_inv"

# Exactly the block of DeepSeek-V3's released config.json.
QUANTIZATION_CONFIG = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [BLOCK, BLOCK],
}

# The tensors the release ships in FP8: every Linear weight of attention, dense MLP,
# routed experts and shared experts. Embeddings, lm_head, norms, the router
# (`mlp.gate.weight`) and `e_score_correction_bias` stay bf16/fp32.
_FP8_WEIGHT = re.compile(
    r"\.(self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
    r"|mlp\.(experts\.\d+\.|shared_experts\.)?(gate_proj|up_proj|down_proj))\.weight$"
)

Direction = Literal["fp8_to_bf16", "bf16_to_fp8"]

# One row per tensor of the source checkpoint (scale tensors are reported with their weight).
CONVERT_REPORT_SCHEMA = pa.schema([
    ("tensor", pa.string()),                 # tensor name in the source checkpoint
    ("shard", pa.string()),                  # shard file holding it (same name in source and output)
    ("scale_shard", pa.string()),            # shard of its weight_scale_inv; null when no scale involved
    ("shape", pa.list_(pa.int64())),         # tensor shape
    ("dtype_in", pa.string()),               # torch dtype in the source, e.g. float8_e4m3fn
    ("dtype_out", pa.string()),              # torch dtype written
    ("action", pa.string()),                 # dequantize | quantize | copy
    ("scale_min", pa.float32()),             # smallest block scale_inv; null for copies
    ("scale_max", pa.float32()),             # largest block scale_inv; null for copies
    ("max_abs", pa.float32()),               # max |W| of the high-precision weight; null for copies
    ("roundtrip_max_abs_err", pa.float32()), # max |W - dequant(quant(W))| with W the bf16 side; null for copies
    ("device", pa.string()),                 # where the arithmetic ran: cpu | cuda:N
    ("seconds", pa.float64()),               # wall time spent on this tensor
])


def is_fp8_weight(name: str) -> bool:
    """Whether DeepSeek-V3's release stores this tensor in FP8 (with a block scale)."""
    return _FP8_WEIGHT.search(name) is not None


def quantize_fp8_blocks(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """W [N, K] (any float dtype) -> (e4m3 [N, K], fp32 scale_inv [ceil(N/b), ceil(K/b)])."""
    n, k = w.shape
    nb, kb = -(-n // block), -(-k // block)
    # Zero-pad ragged edges to whole blocks; zeros never raise a block's amax.
    x = torch.nn.functional.pad(w.float(), (0, kb * block - k, 0, nb * block - n))
    blocks = x.view(nb, block, kb, block)
    amax = blocks.abs().amax(dim=(1, 3))  # [nb, kb]
    if not torch.isfinite(amax).all():
        raise ValueError("weight has non-finite values; cannot quantize to FP8")
    # An all-zero block gets scale 1: any scale reproduces zeros, and 1 avoids 0/0.
    scale_inv = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (blocks / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.view(nb * block, kb * block)[:n, :k].contiguous(), scale_inv.contiguous()


def dequantize_fp8_blocks(
    w_fp8: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype = torch.bfloat16, block: int = BLOCK
) -> torch.Tensor:
    """Inverse of quantize_fp8_blocks, as DeepSeek's `weight_dequant`: fp32 product, then cast."""
    n, k = w_fp8.shape
    nb, kb = -(-n // block), -(-k // block)
    if tuple(scale_inv.shape) != (nb, kb):
        raise ValueError(f"scale_inv shape {tuple(scale_inv.shape)} does not fit weight {(n, k)}: want {(nb, kb)}")
    s = scale_inv.float().repeat_interleave(block, 0)[:n].repeat_interleave(block, 1)[:, :k]
    return (w_fp8.float() * s).to(dtype)


def round_trip_error(w: torch.Tensor) -> float:
    """max |W - dequant(quant(W))| in fp32: what one pass through FP8 blocks costs W."""
    q, s = quantize_fp8_blocks(w)
    return (dequantize_fp8_blocks(q, s, torch.float32) - w.float()).abs().max().item()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _output_bytes(src_dir: Path, weight_map: dict[str, str], direction: Direction) -> int:
    """Bytes of the converted tensors, computed from the shard headers alone."""
    total = 0
    for shard in sorted(set(weight_map.values())):
        with safe_open(src_dir / shard, framework="pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                shape, dtype = sl.get_shape(), sl.get_dtype()
                numel = 1
                for d in shape:
                    numel *= d
                if direction == "fp8_to_bf16":
                    if name.endswith(SCALE_SUFFIX):
                        continue
                    total += numel * (2 if dtype.startswith("F8") else DTYPE_BYTES[dtype])
                elif is_fp8_weight(name):
                    total += numel + 4 * (-(-shape[0] // BLOCK)) * (-(-shape[1] // BLOCK))
                else:
                    total += numel * DTYPE_BYTES[dtype]
    return total


def check_free_space(dst_dir: Path, need: int) -> None:
    """Fail before any work when the output cannot fit (10% + 64 MiB headroom)."""
    probe = Path(dst_dir).resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    want = int(need * 1.1) + (64 << 20)
    if free < want:
        raise OSError(
            f"not enough disk space for {dst_dir}: need about {want / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB free on {probe}"
        )


class _ScaleSource:
    """Finds `<weight>_scale_inv` wherever the index puts it: the open shard or another one.
    Only the one scale tensor is read from another shard, so memory stays at one shard."""

    def __init__(self, src_dir: Path, weight_map: dict[str, str]):
        self.src_dir, self.weight_map = src_dir, weight_map

    def get(self, weight_name: str, shard: str, handle) -> tuple[torch.Tensor, str]:
        name = weight_name + SCALE_SUFFIX
        where = self.weight_map.get(name)
        if where is None:
            raise ValueError(f"FP8 tensor {weight_name} has no {name} in the index of {self.src_dir}")
        if where == shard:
            return handle.get_tensor(name), where
        with safe_open(self.src_dir / where, framework="pt") as other:
            return other.get_tensor(name), where


def _convert_tensor(
    name: str, tensor: torch.Tensor, direction: Direction, dev: torch.device, scale: tuple | None
) -> tuple[dict[str, torch.Tensor], dict]:
    """One source tensor -> the tensors to write under their names, and its report fields."""
    row = {"dtype_in": _dtype_name(tensor), "action": "copy", "scale_shard": None, "scale_min": None,
           "scale_max": None, "max_abs": None, "roundtrip_max_abs_err": None}
    if direction == "fp8_to_bf16" and tensor.dtype == FP8:
        scale_inv, scale_shard = scale
        w = dequantize_fp8_blocks(tensor.to(dev), scale_inv.to(dev), torch.bfloat16)
        out = {name: w.cpu()}
        row.update(action="dequantize", scale_shard=scale_shard, scale_min=scale_inv.min().item(),
                   scale_max=scale_inv.max().item(), max_abs=w.abs().max().item(),
                   roundtrip_max_abs_err=round_trip_error(w))
    elif direction == "bf16_to_fp8" and is_fp8_weight(name):
        if tensor.dtype == FP8:
            raise ValueError(f"{name} is already FP8; use direction fp8_to_bf16 or a BF16 source")
        w = tensor.to(dev)
        q, scale_inv = quantize_fp8_blocks(w)
        out = {name: q.cpu(), name + SCALE_SUFFIX: scale_inv.cpu()}
        err = (dequantize_fp8_blocks(q, scale_inv, torch.float32) - w.float()).abs().max().item()
        row.update(action="quantize", scale_min=scale_inv.min().item(), scale_max=scale_inv.max().item(),
                   max_abs=w.abs().max().item(), roundtrip_max_abs_err=err)
    else:
        out = {name: tensor}
    row["dtype_out"] = _dtype_name(out[name])
    return out, row


def _rewrite_config(src_dir: Path, dst_dir: Path, direction: Direction) -> None:
    config = json.loads((src_dir / CONFIG_NAME).read_text())
    if direction == "fp8_to_bf16":
        # A stale quantization_config would make loaders expect FP8 weights and scales.
        config.pop("quantization_config", None)
    else:
        config["quantization_config"] = dict(QUANTIZATION_CONFIG)
    # The release states bfloat16 (non-FP8 tensors, compute dtype) under `torch_dtype`;
    # transformers 5 writes `dtype`: keep both in step when present.
    config["torch_dtype"] = "bfloat16"
    if "dtype" in config:
        config["dtype"] = "bfloat16"
    write_json(dst_dir / CONFIG_NAME, config)


def convert_checkpoint(
    src_dir: str | Path,
    dst_dir: str | Path,
    direction: Direction,
    device: str = "auto",
    report_path: str | Path | None = None,
) -> pa.Table:
    """Convert a sharded checkpoint shard by shard; returns (and writes) the per-tensor report.

    Memory holds one source shard, its converted tensors and at most one foreign scale.
    The output directory appears atomically, complete or not at all.
    """
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if direction not in ("fp8_to_bf16", "bf16_to_fp8"):
        raise ValueError(f"unknown direction {direction!r}")
    dev = resolve_device(device)
    weight_map = read_index(src_dir)["weight_map"]
    shards = sorted(set(weight_map.values()))
    check_free_space(dst_dir, _output_bytes(src_dir, weight_map, direction))
    scales = _ScaleSource(src_dir, weight_map)
    rows, new_map, total_size = [], {}, 0
    log.info("%s: %d shards of %s on %s", direction, len(shards), src_dir, dev)
    with atomic_dir(dst_dir) as tmp:
        for shard in track(shards, desc=direction, unit="shard"):
            out: dict[str, torch.Tensor] = {}
            with safe_open(src_dir / shard, framework="pt") as f:
                for name in f.keys():
                    if direction == "fp8_to_bf16" and name.endswith(SCALE_SUFFIX):
                        continue  # consumed together with its weight, wherever that lives
                    t0 = time.perf_counter()
                    tensor = f.get_tensor(name)
                    scale = scales.get(name, shard, f) if tensor.dtype == FP8 and direction == "fp8_to_bf16" else None
                    converted, row = _convert_tensor(name, tensor, direction, dev, scale)
                    if row["action"] == "quantize":
                        row["scale_shard"] = shard
                    out.update(converted)
                    rows.append({"tensor": name, "shard": shard, "shape": list(tensor.shape),
                                 "device": str(dev), "seconds": time.perf_counter() - t0, **row})
            save_file(out, tmp / shard, metadata={"format": "pt"})
            for name, t in out.items():
                new_map[name] = shard
                total_size += t.numel() * t.element_size()
            del out
        write_index(tmp, new_map, total_size)
        _rewrite_config(src_dir, tmp, direction)
        copy_side_files(src_dir, tmp)
    table = pa.Table.from_pylist(rows, schema=CONVERT_REPORT_SCHEMA)
    if report_path is not None:
        write_table(report_path, table, CONVERT_REPORT_SCHEMA)
    done = [r for r in rows if r["action"] != "copy"]
    log.info("%s: %d tensors converted, worst round-trip error %.3g", direction, len(done),
             max((r["roundtrip_max_abs_err"] for r in done), default=0.0))
    return table
