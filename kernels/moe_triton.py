"""Skip-aware grouped expert GEMMs in Triton: FP8 (DeepSeek block scales) or BF16 weights.

Three launches per MoE layer, at any batch:

  prepare  layout of the kept (token, slot) pairs into expert blocks, x quantised once,
           output zeroed (prepare.py)
  gate/up  h[row]        = silu(x[token] @ gate[e].T) * (x[token] @ up[e].T)   rows of expert e
  down     out[token]   += w[token, slot] * (h[row] @ down[e].T)               fp32 atomics

Both GEMMs run a persistent grid over the live work items (used block, column tile): the
item count is read on the device from the layout, so a skipped expert owns no block and
costs no CTA, and the grid is a fixed few waves, not the worst case. Each item computes
its tile swapped (weights as the MMA's M side, the block's <= 16 rows as its N side), so
a decode block still feeds the tensor cores' FP8 instruction at full width.

FP8: weights are e4m3 with one fp32 scale per 128x128 block (`weight_scale_inv`);
activations are quantised exactly once, one scale per row per 128 input channels
(DeepSeek's act_quant, amax clamped at AMAX_EPS): x in the prepare launch, h in the
gate/up epilogue (a gate/up tile is 128 columns of I: one scale group). The K step is the
128 of the scale blocks, and each partial product is rescaled before accumulation:
acc += (w_fp8 @ a_fp8.T) * w_scale[:, None] * a_scale[None, :].
The down GEMM accumulates into an fp32 buffer with relaxed atomics; the last item to
finish a column tile (an arrival ticket, acq_rel) writes that tile out in x's dtype.
Shapes: T tokens, K slots, H hidden, I expert intermediate, E experts, P padded rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .prepare import prepare, quant_rows
from .reference import AMAX_EPS, BLOCK, FP8_MAX


@dataclass(frozen=True)
class GemmConfig:
    block_n: int  # weight rows (output columns) per work item; FP8 gate/up needs 128 (one h scale group)
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


# Decode-sized default: at batch <= 128 most blocks hold a handful of rows, and the time
# is the weight stream, so block_m is 8, the narrowest FP8 wgmma (m64n8k32) and the least
# padding; kernels/static_check.py: 190 / 106 SASS instructions per K step per warp on
# sm_90 (gate/up / down). kernel_build tunes per batch.
DEFAULT_CONFIG = MoeConfig(8, GemmConfig(128, 128, 4, 4), GemmConfig(64, 128, 4, 4))
# BF16/FP16/FP32 weights: 2-4x the bytes per tile, so narrower K steps to fit shared memory.
DEFAULT_CONFIG_WIDE = MoeConfig(8, GemmConfig(64, 64, 4, 3), GemmConfig(64, 64, 4, 3))
SMEM_LIMIT = 200 * 1024  # bytes of pipelined tiles per CTA: sm_90 allows 227 KiB, Triton needs some for itself
CTAS_PER_SM = 2  # persistent grid: this many programs per SM, each looping over work items
INTERPRETER_PROGRAMS = 3  # the interpreter runs programs one by one: few, to test the item loop

# Jitted code may only read constexpr globals.
BLOCK_SCALE: tl.constexpr = tl.constexpr(BLOCK)
Q_MAX: tl.constexpr = tl.constexpr(FP8_MAX)
Q_EPS: tl.constexpr = tl.constexpr(AMAX_EPS)
# Triton 3.9's CPU interpreter multiplies the raw bits of bf16 operands in tl.dot; there
# the dot runs on fp32 copies instead (exact: bf16 products fit fp32). Fixed at import.
UPCAST_DOT = bool(triton.knobs.runtime.interpret)


@triton.jit
def _mma(w, a, acc, ws_ptr, a_s, FP8: tl.constexpr, UPCAST: tl.constexpr):
    """acc + w @ a. FP8: rescaled per K block by the weight block's scale (read at ws_ptr)
    times a's row scales a_s [BA]; other weights have no scales and read nothing."""
    if FP8:
        return acc + tl.dot(w, a) * (tl.load(ws_ptr) * a_s)[None, :]
    elif UPCAST:
        return tl.dot(w.to(tl.float32), a.to(w.dtype).to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(w, a.to(w.dtype), acc, input_precision="ieee")  # ieee: fp32 weights get no tf32


@triton.jit
def _tile_matmul(w_desc, w_row0, W_ROW2, ws_ptr, stride_wsn,  # W: TMA descriptor of [E*N, KD] (a weight)
                 a_ptr, a_rows, a_mask, stride_am, as_ptr, stride_asm,  # A [rows, KD] row-major, its 1x128 scales
                 KD, BLOCK_W: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_K: tl.constexpr,
                 PAIRED: tl.constexpr, FP8: tl.constexpr, UPCAST: tl.constexpr):
    """(acc, acc2), each [BLOCK_W, BLOCK_A] fp32: acc = W[w_row0 : w_row0 + BLOCK_W] @ A[a_rows].T
    (swap-AB: weights on the MMA's M side) and, when PAIRED, acc2 the same for the rows
    W_ROW2 further on (gate and up share each activation load; unpaired: acc2 is acc).
    Weight tiles come by TMA (no address arithmetic per K step); w_row0 counts rows of the
    stacked [E*N, KD] view. FP8: both operands already e4m3; a tile lies in one 128-row
    scale block, so each K step reads one weight scale (a scalar) and the rows' activation
    scales (ws_ptr points at the expert's scales, w_row0 - e*N in its rows: the caller's)."""
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[None, :].to(tl.int64) * stride_am + offs_k[:, None]  # BK, BA
    ws_ptrs = ws_ptr  # this tile's row of weight scales
    if PAIRED:
        ws2_offs = (W_ROW2 // BLOCK_SCALE) * stride_wsn
    acc = tl.zeros((BLOCK_W, BLOCK_A), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_W, BLOCK_A), dtype=tl.float32)
    for k0 in range(0, KD, BLOCK_K):
        a = tl.load(a_ptrs, mask=a_mask[None, :], other=0.0)
        a_s = tl.load(as_ptr + a_rows * stride_asm + k0 // BLOCK_SCALE, mask=a_mask & FP8, other=0.0)  # BA
        acc = _mma(w_desc.load([w_row0, k0]), a, acc, ws_ptrs, a_s, FP8, UPCAST)
        if PAIRED:
            acc2 = _mma(w_desc.load([w_row0 + W_ROW2, k0]), a, acc2, ws_ptrs + ws2_offs, a_s, FP8, UPCAST)
        a_ptrs += BLOCK_K
        ws_ptrs += 1
    if PAIRED:
        return acc, acc2
    else:
        return acc, acc


@triton.jit
def _block_rows(pairs_ptr, block, SLOTS, BLOCK_M: tl.constexpr):
    """(rows, pair, valid, token) of one layout block; padding rows read token 0, masked."""
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pairs_ptr + rows)
    valid = pair >= 0
    return rows, pair, valid, tl.where(valid, pair // SLOTS, 0)


@triton.jit
def _gate_up_kernel(x_ptr, stride_xt, xs_ptr, w_desc, ws_ptr, stride_wse, stride_wsn,
                    h_ptr, hs_ptr, pairs_ptr, block_expert_ptr, used_ptr, H, I, SLOTS,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP8: tl.constexpr,
                    UPCAST: tl.constexpr):
    """Items (used block, tile of BLOCK_N columns of I): h = silu(gate) * up, FP8-quantised when FP8."""
    n_tiles = I // BLOCK_N
    for item in range(tl.program_id(0), tl.load(used_ptr) * n_tiles, tl.num_programs(0)):
        block = item // n_tiles
        n0 = (item % n_tiles) * BLOCK_N
        e = tl.load(block_expert_ptr + block)  # int32: TMA coordinates are 32-bit
        rows, pair, valid, token = _block_rows(pairs_ptr, block, SLOTS, BLOCK_M)
        # The gate rows n0.. and the matching up rows I + n0.. (w13 = [gate; up]), one loop.
        ws_tile = ws_ptr + e.to(tl.int64) * stride_wse + (n0 // BLOCK_SCALE) * stride_wsn
        gate, up = _tile_matmul(w_desc, e * 2 * I + n0, I, ws_tile, stride_wsn,
                                x_ptr, token, valid, stride_xt, xs_ptr, H // BLOCK_SCALE,
                                H, BLOCK_N, BLOCK_M, BLOCK_K, True, FP8, UPCAST)  # BN, BM each
        h = tl.trans(gate * tl.sigmoid(gate) * up)  # BM, BN
        cols = n0 + tl.arange(0, BLOCK_N)
        h_ptrs = h_ptr + rows[:, None].to(tl.int64) * I + cols[None, :]
        if FP8:  # BLOCK_N == 128: this tile is exactly one scale group of each row
            q, s = quant_rows(h, Q_MAX, Q_EPS)
            tl.store(h_ptrs, q, mask=valid[:, None])
            tl.store(hs_ptr + rows * (I // BLOCK_SCALE) + n0 // BLOCK_SCALE, s, mask=valid)
        else:
            tl.store(h_ptrs, h, mask=valid[:, None])


@triton.jit
def _down_kernel(h_ptr, hs_ptr, w_desc, ws_ptr, stride_wse, stride_wsn,
                 acc_ptr, out_ptr, tickets_ptr, pairs_ptr, block_expert_ptr, used_ptr, route_w_ptr, T, H, I, SLOTS,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP8: tl.constexpr,
                 UPCAST: tl.constexpr):
    """Items (used block, tile of BLOCK_N columns of H): acc[token] += routing weight * h[row] @ down[e].T."""
    n_tiles = H // BLOCK_N
    used = tl.load(used_ptr)
    for item in range(tl.program_id(0), used * n_tiles, tl.num_programs(0)):
        block = item // n_tiles
        tile = item % n_tiles
        e = tl.load(block_expert_ptr + block)  # int32: TMA coordinates are 32-bit
        rows, pair, valid, token = _block_rows(pairs_ptr, block, SLOTS, BLOCK_M)
        cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        ws_tile = ws_ptr + e.to(tl.int64) * stride_wse + (tile * BLOCK_N // BLOCK_SCALE) * stride_wsn
        acc, _ = _tile_matmul(w_desc, e * H + tile * BLOCK_N, 0, ws_tile, stride_wsn, h_ptr, rows, valid, I, hs_ptr, I // BLOCK_SCALE,
                              I, BLOCK_N, BLOCK_M, BLOCK_K, False, FP8, UPCAST)  # BN, BM
        route_w = tl.load(route_w_ptr + pair, mask=valid, other=0.0).to(tl.float32)
        tl.atomic_add(acc_ptr + token[None, :].to(tl.int64) * H + cols[:, None], acc * route_w[None, :],
                      mask=valid[None, :], sem="relaxed")
        # Every used block adds to every column tile once: the used-th arrival is the last
        # (modulo: a launch re-run alone for timing, tickets not re-zeroed, still ends in a cast).
        # Barrier, then one release (CUTLASS's GenericBarrier::arrive_inc pattern).
        tl.debug_barrier()
        if tl.atomic_add(tickets_ptr + tile, 1, sem="acq_rel") % used == used - 1:
            for t0 in range(0, T, BLOCK_M):
                t = t0 + tl.arange(0, BLOCK_M)
                offs = t[:, None].to(tl.int64) * H + cols[None, :]
                v = tl.load(acc_ptr + offs, mask=t[:, None] < T, cache_modifier=".cg")
                tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=t[:, None] < T)


def default_config(fp8: bool) -> MoeConfig:
    return DEFAULT_CONFIG if fp8 else DEFAULT_CONFIG_WIDE


def config_misfit(config: MoeConfig, hidden: int, intermediate: int, fp8: bool, weight_bytes: int = 1) -> str | None:
    """Why `config` cannot tile these expert shapes with weights of weight_bytes (None: it can)."""
    for name, g, kd, n in (("gate_up", config.gate_up, hidden, intermediate), ("down", config.down, intermediate, hidden)):
        if kd % g.block_k or n % g.block_n or (fp8 and (BLOCK % g.block_k or BLOCK % g.block_n)):
            return (f"{name}: block_k {g.block_k} / block_n {g.block_n} do not divide {kd} / {n}"
                    + (" (FP8 needs both dividing 128)" if fp8 else ""))
        tiles = 2 if name == "gate_up" else 1  # gate and up
        smem = g.num_stages * (tiles * g.block_n * g.block_k * weight_bytes + config.block_m * g.block_k * (1 if fp8 else 4))
        if smem > SMEM_LIMIT:
            return f"{name}: {g.num_stages} stages of its tiles need {smem // 1024} KiB of shared memory (> {SMEM_LIMIT // 1024})"
    if fp8 and (hidden % BLOCK or intermediate % BLOCK):
        return f"FP8 block scales need hidden {hidden} and intermediate {intermediate} multiples of {BLOCK}"
    if fp8 and config.gate_up.block_n != BLOCK:
        return f"FP8 gate_up block_n must be {BLOCK}: its epilogue quantises h in 1x{BLOCK} groups"
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
    if fp8 and (tuple(w13_scale.shape) != (e, 2 * i // BLOCK, h // BLOCK) or tuple(w2_scale.shape) != (e, h // BLOCK, i // BLOCK)):
        raise ValueError(f"FP8 scales {tuple(w13_scale.shape)}, {tuple(w2_scale.shape)} are not 128x128 blocks of "
                         f"w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}")  # fmt: skip
    if (why := config_misfit(config, h, i, fp8, w13.element_size())) is not None:
        raise ValueError(why)
    if not (w13.is_contiguous() and w2.is_contiguous()):
        raise ValueError("weights must be contiguous (checkpoint layout [E, N, K]): the kernel reads them by TMA")
    return fp8


def _weight_desc(w: torch.Tensor, g: GemmConfig) -> TensorDescriptor:
    """TMA descriptor of the stacked experts [E*N, KD], one tile = block_n rows x block_k."""
    e, n, kd = w.shape
    return TensorDescriptor(w, [e * n, kd], [kd, 1], [g.block_n, g.block_k])  # w contiguous (_check)


def persistent_grid(items: int, device: torch.device) -> int:
    """Programs of a persistent launch over at most `items` work items."""
    if device.type != "cuda":
        return max(1, min(items, INTERPRETER_PROGRAMS))
    return max(1, min(items, CTAS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count))


def moe_triton(
    x: torch.Tensor,  # T, H
    w13: torch.Tensor,  # E, 2I, H   gate rows then up rows; fp8 e4m3 or bf16/fp16/fp32
    w2: torch.Tensor,  # E, H, I
    ids: torch.Tensor,  # T, K
    weights: torch.Tensor,  # T, K   routing weights (applied in the down GEMM)
    keep: torch.Tensor | None = None,  # T, K   False = skipped: never loaded, never computed
    w13_scale: torch.Tensor | None = None,  # E, 2I/128, H/128   fp32 (FP8 only)
    w2_scale: torch.Tensor | None = None,  # E, H/128, I/128
    config: MoeConfig | None = None,  # None: default_config for the weights' dtype
    pad_slots: torch.Tensor | None = None,  # >= T ints: a token whose entry is negative is padding (zero output)
) -> torch.Tensor:
    """Routed-expert output [T, H] in x's dtype; same contract as reference.moe_reference
    with quantize_activations = (weights are FP8). Three launches, no host sync.
    pad_slots: vLLM's slot mapping under CUDA graphs, where a batch is padded to a captured
    size; the padding tokens' routing is garbage and must not load experts."""
    launches, out = moe_launches(x, w13, w2, ids, weights, keep, w13_scale, w2_scale, config, pad_slots)
    launches["gate_up"]()  # prepare ran when its buffers were made
    launches["down"]()
    return out


def moe_launches(x, w13, w2, ids, weights, keep=None, w13_scale=None, w2_scale=None, config: MoeConfig | None = None,
                 pad_slots=None) -> tuple[dict[str, Callable[[], None]], torch.Tensor]:
    """({prepare, gate_up, down}: the layer's launches over shared buffers, out [T, H]).
    Arguments as moe_triton's. prepare has run once; each may be re-run alone (bench.py
    times them one by one): the down launch's last-arrival test counts modulo the used
    blocks, so its re-runs still write out (out then holds the sum of the runs)."""
    config = config or default_config(w13.dtype == torch.float8_e4m3fn)
    fp8 = _check(x, w13, w2, w13_scale, w2_scale, config)
    t, h = x.shape
    e, two_i, _ = w13.shape
    i = two_i // 2
    gu, dn = config.gate_up, config.down
    x, ids = x.contiguous(), ids.contiguous()  # no-ops (no launch) for the engines' tensors
    prep = prepare(x, ids, None if keep is None else keep.contiguous(), e, config.block_m, fp8, h // dn.block_n,
                   pad_slots)  # fmt: skip
    lay = prep.layout
    # Without FP8 there are no scales; any tensor serves as the never-read pointer.
    s13, s2 = (w13_scale.float().contiguous(), w2_scale.float().contiguous()) if fp8 else (w13, w2)
    route_w = weights.reshape(-1).contiguous()  # N, indexed by pair
    p = lay.pairs.numel()
    h_buf = torch.empty(p, i, dtype=torch.float8_e4m3fn if fp8 else torch.float32, device=x.device)  # P, I
    hs = torch.empty(p, i // BLOCK, dtype=torch.float32, device=x.device) if fp8 else h_buf  # P, I/128
    gate_up = partial(
        _gate_up_kernel[(persistent_grid(lay.max_blocks * (i // gu.block_n), x.device),)],
        prep.xq, prep.xq.stride(0), prep.xs, _weight_desc(w13, gu), s13, s13.stride(0), s13.stride(1),
        h_buf, hs, lay.pairs, lay.block_expert, lay.used_blocks, h, i, lay.slots,
        BLOCK_M=config.block_m, BLOCK_N=gu.block_n, BLOCK_K=gu.block_k, FP8=fp8, UPCAST=UPCAST_DOT,
        num_warps=gu.num_warps, num_stages=gu.num_stages,
    )  # fmt: skip
    down = partial(
        _down_kernel[(persistent_grid(lay.max_blocks * (h // dn.block_n), x.device),)],
        h_buf, hs, _weight_desc(w2, dn), s2, s2.stride(0), s2.stride(1),
        prep.acc, prep.out, prep.tickets, lay.pairs, lay.block_expert, lay.used_blocks, route_w, t, h, i, lay.slots,
        BLOCK_M=config.block_m, BLOCK_N=dn.block_n, BLOCK_K=dn.block_k, FP8=fp8, UPCAST=UPCAST_DOT,
        num_warps=dn.num_warps, num_stages=dn.num_stages,
    )  # fmt: skip
    return {"prepare": prep.launch, "gate_up": gate_up, "down": down}, prep.out
