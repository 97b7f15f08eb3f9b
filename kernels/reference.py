"""Pure-PyTorch reference of DeepSeek-V3's routed experts under a skip mask.

The ground truth every faster kernel is checked against. Shapes:
  T tokens, H hidden, I expert intermediate, E experts, K routing slots.
Weights follow the checkpoint layout: gate/up fused as w13 [E, 2I, H], down w2 [E, H, I],
FP8 e4m3 with one fp32 scale per 128x128 block (`weight_scale_inv`), or plain floats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCK = 128
FP8_MAX = 448.0  # largest finite float8_e4m3fn
AMAX_EPS = 1e-4  # activation amax floor: an all-zero row must not divide by zero


def dequant_blocks(
    w: torch.Tensor, scale_inv: torch.Tensor, block: int = BLOCK, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """[N, K] fp8 and [ceil(N/b), ceil(K/b)] scales -> [N, K] in dtype (ragged edges allowed)."""
    n, k = w.shape[-2:]
    scale = scale_inv.repeat_interleave(block, -2)[..., :n, :].repeat_interleave(block, -1)[..., :k]
    return w.to(dtype) * scale.to(dtype)


def quant_blocks(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., N, K] float -> (e4m3 [..., N, K], fp32 scale_inv [..., N/b, K/b]): DeepSeek's
    128x128 weight format for stacks of experts at once (N, K multiples of the block)."""
    *lead, n, k = w.shape
    assert n % block == 0 and k % block == 0, "weight dims must be multiples of the block"
    wb = w.float().reshape(*lead, n // block, block, k // block, block)
    amax = wb.abs().amax(dim=(-3, -1))  # ..., N/b, K/b
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))  # all-zero block: any scale
    q = (wb / scale[..., :, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.reshape(w.shape), scale


def quant_act_1x128(x: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token, per-128-channel FP8 quantisation of activations (DeepSeek's act_quant).

    x [T, H] -> (x_fp8 [T, H], scale [T, H/128]) with x ~= x_fp8 * scale.
    """
    t, h = x.shape
    assert h % block == 0, "hidden size must be a multiple of the block"
    xb = x.float().view(t, h // block, block)
    scale = xb.abs().amax(-1).clamp(min=AMAX_EPS) / FP8_MAX  # T, H/128
    q = (xb / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(t, h), scale


def dequant_act(q: torch.Tensor, scale: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    t, h = q.shape
    return (q.float().view(t, h // block, block) * scale[..., None]).view(t, h)


def expert_weights(w: torch.Tensor, scale_inv: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One expert's weight in dtype (at least float32 while dequantising), scales applied if any."""
    wide = torch.promote_types(dtype, torch.float32)  # fp8 * fp32 scale must not round in bf16
    return (w.to(wide) if scale_inv is None else dequant_blocks(w, scale_inv, dtype=wide)).to(dtype)


def moe_reference(
    x: torch.Tensor,  # T, H
    w13: torch.Tensor,  # E, 2I, H   (gate rows first, then up)
    w2: torch.Tensor,  # E, H, I
    ids: torch.Tensor,  # T, K  expert of each slot
    weights: torch.Tensor,  # T, K  routing weight of each slot
    keep: torch.Tensor | None = None,  # T, K  False = slot skipped (never computed)
    w13_scale: torch.Tensor | None = None,  # E, 2I/128, H/128
    w2_scale: torch.Tensor | None = None,  # E, H/128, I/128
    quantize_activations: bool = False,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Routed-expert output [T, H]: sum over kept slots of weight * down(silu(gate) * up).

    A readable loop over experts: only experts with at least one kept slot are computed,
    which is the behaviour (not the speed) a skip-aware kernel must reproduce.
    """
    if keep is None:
        keep = torch.ones_like(ids, dtype=torch.bool)
    if quantize_activations:
        q, s = quant_act_1x128(x)
        x = dequant_act(q, s)
    x = x.to(compute_dtype)
    out = torch.zeros(x.shape, dtype=compute_dtype, device=x.device)
    flat_ids = torch.where(keep, ids, -1)  # T, K
    for e in flat_ids.unique().tolist():
        if e < 0:
            continue
        token, slot = (flat_ids == e).nonzero(as_tuple=True)  # n routed (token, slot) pairs
        gate_up = expert_weights(w13[e], None if w13_scale is None else w13_scale[e], compute_dtype)
        down = expert_weights(w2[e], None if w2_scale is None else w2_scale[e], compute_dtype)
        gate, up = (x[token] @ gate_up.T).chunk(2, dim=-1)  # n, I each
        h = F.silu(gate) * up
        if quantize_activations:  # the down GEMM also reads FP8 activations
            q, s = quant_act_1x128(h)
            h = dequant_act(q, s).to(compute_dtype)
        y = h @ down.T  # n, H
        out.index_add_(0, token, y * weights[token, slot, None].to(compute_dtype))
    return out


def distinct_experts(ids: torch.Tensor, keep: torch.Tensor) -> int:
    """Experts whose weights a step must read: distinct ids among kept slots of the batch."""
    return int(torch.where(keep, ids, -1).unique().ge(0).sum())


def deepseek_route(
    x: torch.Tensor,  # T, H
    router: torch.Tensor,  # E, H
    bias: torch.Tensor,  # E   e_score_correction_bias: used to select, not to weight
    top_k: int = 8,
    n_group: int = 8,
    topk_group: int = 4,
    scale: float = 2.5,  # routed_scaling_factor
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's noaux_tc routing -> (ids [T, K], weights [T, K]) (DESIGN.md section 3).

    Group score = sum of a group's top-2 biased scores; the best topk_group groups stay
    eligible; the top_k biased scores among them win; weights = s / sum(s) * scale.
    """
    t, e = x.shape[0], router.shape[0]
    s = torch.sigmoid(x.float() @ router.float().T)  # T, E
    biased = s + bias.float()
    group = biased.view(t, n_group, e // n_group).topk(2, dim=-1).values.sum(-1)  # T, G
    keep_group = torch.zeros_like(group).scatter_(1, group.topk(topk_group, dim=-1).indices, 1.0)
    eligible = keep_group.repeat_interleave(e // n_group, dim=1).bool()  # T, E
    ids = biased.masked_fill(~eligible, float("-inf")).topk(top_k, dim=-1).indices
    w = s.gather(1, ids)
    return ids, w / w.sum(-1, keepdim=True) * scale
