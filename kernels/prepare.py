"""The first of the MoE layer's three launches: routing -> block layout, activations -> FP8.

One grid, two roles, so the whole step before the GEMMs is a single launch with no host
sync (the ~40 small torch ops of layout.moe_layout, the readable reference, become one):

  program 0        the layout: per-expert counts (atomics give each kept pair its rank
                   within its expert), block counts, their prefix sum, then every kept
                   pair scattered to its padded row and every block given its expert.
                   One CTA, so a barrier orders its phases. Arguments as in moe_layout.
  programs 1..T    token t-1: x quantised once to e4m3 with 1x128 scales (DeepSeek's
                   act_quant; FP8 only), its output row zeroed (fp32 accumulator and the
                   returned row: an all-skipped step returns zeros), and program 1 also
                   zeroes the down GEMM's per-column-tile arrival tickets.

Rows of one expert take the order of the atomics: token order under the interpreter, any
order on a GPU; a row's result does not depend on its position in the block.
Shapes: T tokens, K slots, N = T*K pairs, E experts, P padded rows, B blocks, H hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import triton
import triton.language as tl

from .layout import NO_EXPERT, NO_ROW, MoeLayout, max_blocks
from .reference import AMAX_EPS, FP8_MAX

NO_ROW_C: tl.constexpr = tl.constexpr(NO_ROW)
NO_EXPERT_C: tl.constexpr = tl.constexpr(NO_EXPERT)
CHUNK = 1024  # pairs / rows / blocks handled per vector step of the layout program
Q_BLOCK = 128  # activation scale group (reference.BLOCK)


@triton.jit
def round_e4m3(v, RINT_MAGIC: tl.constexpr = 12582912.0):
    """v (fp32, |v| <= 448) rounded to nearest-even on the e4m3 grid, so the cast after it
    is exact on every backend (the interpreter's own fp8 rounding drops mantissa carries).
    Grid step: 2**(exponent - 3), and 2**-9 below e4m3's smallest normal 2**-6.
    RINT_MAGIC = 1.5 * 2**23: (v + M) - M rounds |v| < 2**22 to even."""
    step_e = tl.maximum((v.to(tl.int32, bitcast=True) >> 23) & 0xFF, 127 - 6) - 3  # biased exponent of the step
    step = (step_e << 23).to(tl.float32, bitcast=True)
    inv_step = ((254 - step_e) << 23).to(tl.float32, bitcast=True)  # powers of two: both products exact
    return ((v * inv_step + RINT_MAGIC) - RINT_MAGIC) * step


@triton.jit
def quant_rows(v, Q_MAX: tl.constexpr, Q_EPS: tl.constexpr):
    """v [R, 128] fp32 -> (e4m3 [R, 128], scale [R]) with v ~= q * scale (1x128 act_quant)."""
    s = tl.maximum(tl.max(tl.abs(v), axis=1), Q_EPS) / Q_MAX  # R
    return round_e4m3(tl.clamp(v / s[:, None], -Q_MAX, Q_MAX)).to(tl.float8e4nv), s


@triton.jit
def _layout_program(ids_ptr, keep_ptr, pad_ptr, counts_ptr, rank_ptr, pairs_ptr, block_expert_ptr, used_ptr,
                    N, SLOTS, E, NB, BLOCK_M: tl.constexpr, E_PAD: tl.constexpr, CH: tl.constexpr, BCH: tl.constexpr,
                    KEEP_ALL: tl.constexpr, HAS_PAD: tl.constexpr):
    offs_e = tl.arange(0, E_PAD)
    tl.store(counts_ptr + offs_e, 0)
    for r0 in range(0, NB * BLOCK_M, CH):  # every row starts as padding
        rows = r0 + tl.arange(0, CH)
        tl.store(pairs_ptr + rows, NO_ROW_C, mask=rows < NB * BLOCK_M)
    tl.debug_barrier()
    for p0 in range(0, N, CH):  # rank of each kept pair within its expert
        p = p0 + tl.arange(0, CH)
        live = p < N
        if not KEEP_ALL:
            live &= tl.load(keep_ptr + p, mask=live, other=0) != 0
        if HAS_PAD:  # a token whose slot entry is negative is CUDA-graph padding: never routed
            live &= tl.load(pad_ptr + p // SLOTS, mask=live, other=-1) >= 0
        e = tl.load(ids_ptr + p, mask=live, other=0).to(tl.int32)
        live &= (e >= 0) & (e < E)  # out-of-range ids of skipped slots are never used
        rank = tl.atomic_add(counts_ptr + e, 1, mask=live, sem="relaxed")
        tl.store(rank_ptr + p, tl.where(live, rank, -1), mask=p < N)
    tl.debug_barrier()
    counts = tl.load(counts_ptr + offs_e, mask=offs_e < E, other=0, cache_modifier=".cg")  # E_PAD
    blocks = (counts + BLOCK_M - 1) // BLOCK_M
    block_end = tl.cumsum(blocks, 0)  # inclusive
    tl.store(counts_ptr + offs_e, (block_end - blocks) * BLOCK_M)  # now: first row of each expert
    tl.store(used_ptr, tl.sum(blocks, 0))
    for b0 in range(0, NB, BCH):  # block b: the first expert whose block_end > b
        b = b0 + tl.arange(0, BCH)
        owner = tl.sum((block_end[None, :] <= b[:, None]).to(tl.int32), axis=1)
        tl.store(block_expert_ptr + b, tl.where(owner < E, owner, NO_EXPERT_C), mask=b < NB)
    tl.debug_barrier()
    for p0 in range(0, N, CH):
        p = p0 + tl.arange(0, CH)
        rank = tl.load(rank_ptr + p, mask=p < N, other=-1, cache_modifier=".cg")
        live = rank >= 0
        e = tl.load(ids_ptr + p, mask=live, other=0).to(tl.int32)
        start = tl.load(counts_ptr + e, mask=live, other=0, cache_modifier=".cg")
        tl.store(pairs_ptr + start + rank, p, mask=live)


@triton.jit
def prepare_kernel(ids_ptr, keep_ptr, pad_ptr, counts_ptr, rank_ptr, pairs_ptr, block_expert_ptr, used_ptr,
                   x_ptr, stride_xt, xq_ptr, xs_ptr, acc_ptr, out_ptr, tickets_ptr, H, N_TICKETS,
                   N, SLOTS, E, NB, BLOCK_M: tl.constexpr, E_PAD: tl.constexpr, CH: tl.constexpr, BCH: tl.constexpr,
                   KEEP_ALL: tl.constexpr, HAS_PAD: tl.constexpr, FP8: tl.constexpr, Q_MAX: tl.constexpr, Q_EPS: tl.constexpr):
    pid = tl.program_id(0)
    if pid == 0:
        _layout_program(ids_ptr, keep_ptr, pad_ptr, counts_ptr, rank_ptr, pairs_ptr, block_expert_ptr, used_ptr,
                        N, SLOTS, E, NB, BLOCK_M, E_PAD, CH, BCH, KEEP_ALL, HAS_PAD)
    else:
        t = (pid - 1).to(tl.int64)
        cols = tl.arange(0, 128)
        for c0 in range(0, H, 128):
            if FP8:
                v = tl.load(x_ptr + t * stride_xt + c0 + cols[None, :]).to(tl.float32)  # 1, 128
                q, s = quant_rows(v, Q_MAX, Q_EPS)
                tl.store(xq_ptr + t * H + c0 + cols[None, :], q)
                tl.store(xs_ptr + t * (H // 128) + c0 // 128 + tl.arange(0, 1), s)
            tl.store(acc_ptr + t * H + c0 + cols, tl.zeros((128,), tl.float32), mask=c0 + cols < H)
            tl.store(out_ptr + t * H + c0 + cols, tl.zeros((128,), out_ptr.dtype.element_ty), mask=c0 + cols < H)
        if pid == 1:
            for j0 in range(0, N_TICKETS, 128):
                tl.store(tickets_ptr + j0 + cols, 0, mask=j0 + cols < N_TICKETS)


@dataclass(frozen=True)
class Prepared:
    """Buffers the prepare launch fills (sizes fixed by the shapes, never by the routing)."""

    layout: MoeLayout
    xq: torch.Tensor  # T, H e4m3 (FP8) or x itself
    xs: torch.Tensor  # T, H/128 fp32 scales (FP8) or x itself (never read)
    acc: torch.Tensor  # T, H fp32, zeroed: the down GEMM's accumulator
    out: torch.Tensor  # T, H in x's dtype, zeroed
    tickets: torch.Tensor  # down column tiles, zeroed
    launch: Callable[[], None]  # the launch that fills them (again: same inputs, same result)


def prepare(x: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor | None, experts: int, block_m: int, fp8: bool,
            down_tiles: int, pad_slots: torch.Tensor | None = None) -> Prepared:
    """Allocate, then launch prepare_kernel once: x [T, H], ids/keep [T, K] -> Prepared
    (Prepared.launch repeats it). T = 0 rows: layout only.
    pad_slots [>= T] int (vLLM's slot mapping): a token whose entry is negative is padding."""
    t, k = ids.shape
    dev, n = ids.device, ids.numel()
    nb = max_blocks(t, k, experts, block_m)
    e_pad = triton.next_power_of_2(experts)
    scratch = torch.empty(e_pad + n + 1, dtype=torch.int32, device=dev)  # counts | ranks | used blocks
    pairs = torch.empty(nb * block_m, dtype=torch.int32, device=dev)
    block_expert = torch.empty(nb, dtype=torch.int32, device=dev)
    h = x.shape[1]
    xq = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=dev) if fp8 else x
    xs = torch.empty(x.shape[0], h // Q_BLOCK, dtype=torch.float32, device=dev) if fp8 else x
    acc = torch.empty(x.shape, dtype=torch.float32, device=dev)
    out = torch.empty_like(x)
    tickets = torch.empty(down_tiles, dtype=torch.int32, device=dev)
    keep_arg = ids if keep is None else keep.view(torch.uint8)  # never read when KEEP_ALL
    launch = partial(
        prepare_kernel[(1 + x.shape[0],)],
        ids, keep_arg, ids if pad_slots is None else pad_slots, scratch, scratch[e_pad:], pairs, block_expert,
        scratch[-1:], x, x.stride(0), xq, xs, acc, out, tickets, h, down_tiles, n, k, experts, nb,
        BLOCK_M=block_m, E_PAD=e_pad, CH=CHUNK, BCH=max(1, CHUNK // e_pad), KEEP_ALL=keep is None,
        HAS_PAD=pad_slots is not None, FP8=fp8,
        Q_MAX=FP8_MAX, Q_EPS=AMAX_EPS,
    )  # fmt: skip
    launch()
    return Prepared(MoeLayout(pairs, block_expert, scratch[-1:], block_m, k), xq, xs, acc, out, tickets, launch)


def layout_on_device(ids: torch.Tensor, keep: torch.Tensor | None, experts: int, block_m: int) -> MoeLayout:
    """The prepare launch's layout alone (one CTA): the same contract as layout.moe_layout,
    except that rows of one expert may come in any order on a GPU."""
    x = torch.empty(0, Q_BLOCK, dtype=torch.float32, device=ids.device)
    return prepare(x, ids, keep, experts, block_m, False, 0).layout
