"""Skip-aware grouped expert GEMMs in Triton: FP8 (DeepSeek block scales) or BF16 weights.

Two launches per MoE layer, over the block-padded layout of layout.py:

  gate/up  h[row]        = silu(x[token] @ gate[e].T) * (x[token] @ up[e].T)   rows of expert e
  down     out[token]   += w[token, slot] * (h[row] @ down[e].T)               atomic fp32 add

Every program owns one block of block_m rows (one expert) and one tile of output columns.
It reads its block's expert first and returns before loading any weight when the block
is unused (skipped slots and empty experts own no block), so a skipped expert costs one
int load per program, not its weight bytes.

FP8: weights are e4m3 with one fp32 scale per 128x128 block (`weight_scale_inv`);
activations are quantised on load, one scale per row per 128 input channels (DeepSeek's
act_quant, amax clamped at AMAX_EPS), so x and h never take an extra pass. The K step is
the 128 of the scale blocks, and each partial product is rescaled before accumulation:
acc += (a_fp8 @ b_fp8) * a_scale[:, None] * b_scale[None, :].
Shapes: T tokens, K slots, H hidden, I expert intermediate, E experts, P padded rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import triton
import triton.language as tl

from .layout import MoeLayout, moe_layout
from .reference import AMAX_EPS, BLOCK, FP8_MAX


@dataclass(frozen=True)
class GemmConfig:
    block_n: int  # output columns per program
    block_k: int  # reduction step; FP8 needs 128 (one weight scale block)
    num_warps: int = 4
    num_stages: int = 3


@dataclass(frozen=True)
class MoeConfig:
    block_m: int  # rows per block: the layout's padding unit, shared by both launches
    gate_up: GemmConfig
    down: GemmConfig

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "MoeConfig":
        d = json.loads(text)
        return cls(d["block_m"], GemmConfig(**d["gate_up"]), GemmConfig(**d["down"]))


# Decode-sized default: at batch <= 128 most blocks hold a handful of rows, and the
# time is the weight stream, so block_m stays small. kernel_build tunes per batch.
DEFAULT_CONFIG = MoeConfig(16, GemmConfig(64, 128, 4, 4), GemmConfig(64, 128, 4, 4))

# Jitted code may only read constexpr globals.
BLOCK_SCALE: tl.constexpr = tl.constexpr(BLOCK)
Q_MAX: tl.constexpr = tl.constexpr(FP8_MAX)
Q_EPS: tl.constexpr = tl.constexpr(AMAX_EPS)
RINT_MAGIC: tl.constexpr = tl.constexpr(12582912.0)  # 1.5 * 2**23: (v + M) - M rounds |v| < 2**22 to even
# Triton 3.9's CPU interpreter multiplies the raw bits of bf16 operands in tl.dot; there
# the dot runs on fp32 copies instead (exact: bf16 products fit fp32). Fixed at import.
UPCAST_DOT = bool(triton.knobs.runtime.interpret)


@triton.jit
def _round_e4m3(v):
    """v (fp32, |v| <= 448) rounded to nearest-even on the e4m3 grid, so the cast after it
    is exact on every backend (the interpreter's own fp8 rounding drops mantissa carries).
    Grid step: 2**(exponent - 3), and 2**-9 below e4m3's smallest normal 2**-6."""
    step_e = tl.maximum((v.to(tl.int32, bitcast=True) >> 23) & 0xFF, 127 - 6) - 3  # biased exponent of the step
    step = (step_e << 23).to(tl.float32, bitcast=True)
    inv_step = ((254 - step_e) << 23).to(tl.float32, bitcast=True)  # powers of two: both products exact
    return ((v * inv_step + RINT_MAGIC) - RINT_MAGIC) * step


@triton.jit
def _tile_matmul(a_ptr, a_rows, a_mask, stride_am,  # A [rows, KD] row-major, any float dtype
                 b_ptr, b_rows, stride_bn,  # B [N, KD] row-major (a weight), rows of this tile
                 bs_ptr, stride_bsn,  # B's block scales [N/128, KD/128] (FP8 only)
                 KD, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 FP8: tl.constexpr, UPCAST: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] fp32 = A[a_rows] @ B[b_rows].T, FP8 with on-load activation quant."""
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None].to(tl.int64) * stride_am + offs_k[None, :]  # BM, BK
    b_ptrs = b_ptr + b_rows[None, :].to(tl.int64) * stride_bn + offs_k[:, None]  # BK, BN
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, KD, BLOCK_K):
        a = tl.load(a_ptrs, mask=a_mask[:, None], other=0.0).to(tl.float32)
        b = tl.load(b_ptrs)
        if FP8:
            # 1x128 activation scale; padding rows are 0 and keep the floor scale.
            a_s = tl.maximum(tl.max(tl.abs(a), axis=1), Q_EPS) / Q_MAX  # BM
            a_q = _round_e4m3(tl.clamp(a / a_s[:, None], -Q_MAX, Q_MAX)).to(tl.float8e4nv)
            b_s = tl.load(bs_ptr + (b_rows // BLOCK_SCALE) * stride_bsn + k0 // BLOCK_SCALE)  # BN
            acc += tl.dot(a_q, b) * a_s[:, None] * b_s[None, :]
        elif UPCAST:
            acc = tl.dot(a.to(b.dtype).to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a.to(b.dtype), b, acc, input_precision="ieee")  # ieee: fp32 weights get no tf32
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    return acc


@triton.jit
def _gate_up_kernel(x_ptr, stride_xt, w_ptr, stride_we, stride_wn, ws_ptr, stride_wse, stride_wsn,
                    h_ptr, stride_hp, pairs_ptr, block_expert_ptr, H, I, SLOTS,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP8: tl.constexpr,
                    UPCAST: tl.constexpr):
    """h[rows of block] = silu(gate) * up over columns [n0, n0 + BLOCK_N) of I."""
    block = tl.program_id(0)
    e = tl.load(block_expert_ptr + block)
    if e < 0:  # unused block: no weight is loaded
        return
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pairs_ptr + rows)
    valid = pair >= 0
    token = tl.where(valid, pair // SLOTS, 0)
    # One tile of 2*BLOCK_N weight rows: the gate rows, then the matching up rows (w13 = [gate; up]).
    n0 = tl.program_id(1) * BLOCK_N
    j = tl.arange(0, 2 * BLOCK_N)
    w_rows = tl.where(j < BLOCK_N, n0 + j, I + n0 + j - BLOCK_N)
    acc = _tile_matmul(x_ptr, token, valid, stride_xt,
                       w_ptr + e.to(tl.int64) * stride_we, w_rows, stride_wn,
                       ws_ptr + e.to(tl.int64) * stride_wse, stride_wsn,
                       H, BLOCK_M, 2 * BLOCK_N, BLOCK_K, FP8, UPCAST)
    gate, up = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N)), (0, 2, 1)))
    h = gate * tl.sigmoid(gate) * up
    cols = n0 + tl.arange(0, BLOCK_N)
    tl.store(h_ptr + rows[:, None].to(tl.int64) * stride_hp + cols[None, :], h, mask=valid[:, None])


@triton.jit
def _down_kernel(h_ptr, stride_hp, w_ptr, stride_we, stride_wn, ws_ptr, stride_wse, stride_wsn,
                 out_ptr, stride_ot, pairs_ptr, block_expert_ptr, route_w_ptr, H, I, SLOTS,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP8: tl.constexpr,
                 UPCAST: tl.constexpr):
    """out[token] += routing weight * h[row] @ down[e].T over columns [n0, n0 + BLOCK_N) of H."""
    block = tl.program_id(0)
    e = tl.load(block_expert_ptr + block)
    if e < 0:
        return
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pairs_ptr + rows)
    valid = pair >= 0
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = _tile_matmul(h_ptr, rows, valid, stride_hp,
                       w_ptr + e.to(tl.int64) * stride_we, cols, stride_wn,
                       ws_ptr + e.to(tl.int64) * stride_wse, stride_wsn,
                       I, BLOCK_M, BLOCK_N, BLOCK_K, FP8, UPCAST)
    route_w = tl.load(route_w_ptr + pair, mask=valid, other=0.0).to(tl.float32)
    token = tl.where(valid, pair // SLOTS, 0)
    tl.atomic_add(out_ptr + token[:, None].to(tl.int64) * stride_ot + cols[None, :], acc * route_w[:, None],
                  mask=valid[:, None])


def config_misfit(config: MoeConfig, hidden: int, intermediate: int, fp8: bool) -> str | None:
    """Why `config` cannot tile these expert shapes (None: it can)."""
    for name, g, kd, n in (("gate_up", config.gate_up, hidden, intermediate), ("down", config.down, intermediate, hidden)):
        if kd % g.block_k or n % g.block_n or (fp8 and BLOCK % g.block_k):
            return (f"{name}: block_k {g.block_k} / block_n {g.block_n} do not divide {kd} / {n}"
                    + (" (FP8 needs block_k dividing 128)" if fp8 else ""))
    if fp8 and (hidden % BLOCK or intermediate % BLOCK):
        return f"FP8 block scales need hidden {hidden} and intermediate {intermediate} multiples of {BLOCK}"
    return None


def _check(x, w13, w2, w13_scale, w2_scale, config: MoeConfig) -> bool:
    """Validate shapes against the config; returns whether the weights are FP8."""
    e, two_i, h = w13.shape
    i = two_i // 2
    fp8 = w13.dtype == torch.float8_e4m3fn
    if tuple(w2.shape) != (e, h, i) or x.shape[-1] != h:
        raise ValueError(f"shapes do not fit: x {tuple(x.shape)}, w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}")
    if fp8 != (w2.dtype == torch.float8_e4m3fn) or fp8 != (w13_scale is not None) or fp8 != (w2_scale is not None):
        raise ValueError("FP8 needs both weights in float8_e4m3fn with both block scales; other dtypes none")
    if (why := config_misfit(config, h, i, fp8)) is not None:
        raise ValueError(why)
    if w13.stride(-1) != 1 or w2.stride(-1) != 1:
        raise ValueError("weights must be contiguous along the reduction dim (checkpoint layout [E, N, K])")
    return fp8


def moe_triton(
    x: torch.Tensor,  # T, H
    w13: torch.Tensor,  # E, 2I, H   gate rows then up rows; fp8 e4m3 or bf16/fp16/fp32
    w2: torch.Tensor,  # E, H, I
    ids: torch.Tensor,  # T, K
    weights: torch.Tensor,  # T, K   routing weights (applied in the down GEMM)
    keep: torch.Tensor | None = None,  # T, K   False = skipped: never loaded, never computed
    w13_scale: torch.Tensor | None = None,  # E, 2I/128, H/128   fp32 (FP8 only)
    w2_scale: torch.Tensor | None = None,  # E, H/128, I/128
    config: MoeConfig = DEFAULT_CONFIG,
    layout: MoeLayout | None = None,  # precomputed for these ids/keep and config.block_m
) -> torch.Tensor:
    """Routed-expert output [T, H] in x's dtype; same contract as reference.moe_reference
    with quantize_activations = (weights are FP8). Two launches, no host sync."""
    fp8 = _check(x, w13, w2, w13_scale, w2_scale, config)
    t, h = x.shape
    e, two_i, _ = w13.shape
    i = two_i // 2
    if layout is None:
        layout = moe_layout(ids, keep, e, config.block_m)
    x = x.contiguous()
    # Without FP8 there are no scales; any tensor serves as the never-read pointer.
    s13, s2 = (w13_scale.float().contiguous(), w2_scale.float().contiguous()) if fp8 else (w13, w2)
    route_w = weights.reshape(-1).contiguous()  # N, indexed by pair
    h_buf = torch.empty(layout.pairs.numel(), i, dtype=torch.float32, device=x.device)  # P, I
    out = torch.zeros(t, h, dtype=torch.float32, device=x.device)  # atomics accumulate in fp32
    gu, dn = config.gate_up, config.down
    _gate_up_kernel[(layout.max_blocks, i // gu.block_n)](
        x, x.stride(0), w13, w13.stride(0), w13.stride(1), s13, s13.stride(0), s13.stride(1),
        h_buf, h_buf.stride(0), layout.pairs, layout.block_expert, h, i, layout.slots,
        BLOCK_M=config.block_m, BLOCK_N=gu.block_n, BLOCK_K=gu.block_k, FP8=fp8, UPCAST=UPCAST_DOT,
        num_warps=gu.num_warps, num_stages=gu.num_stages,
    )  # fmt: skip
    _down_kernel[(layout.max_blocks, h // dn.block_n)](
        h_buf, h_buf.stride(0), w2, w2.stride(0), w2.stride(1), s2, s2.stride(0), s2.stride(1),
        out, out.stride(0), layout.pairs, layout.block_expert, route_w, h, i, layout.slots,
        BLOCK_M=config.block_m, BLOCK_N=dn.block_n, BLOCK_K=dn.block_k, FP8=fp8, UPCAST=UPCAST_DOT,
        num_warps=dn.num_warps, num_stages=dn.num_stages,
    )  # fmt: skip
    return out.to(x.dtype)
