"""Routing -> expert-sorted, block-padded layout: the readable reference (torch ops).

The kernel runs the same layout as one CTA of its prepare launch (prepare.py); this
version (some 40 small torch ops) is what tests compare it with.

The grouped expert GEMMs work on blocks of `block_m` rows that all belong to one expert.
A row is one routed (token, slot) pair, named by its flat index p = token * K + slot.
Shapes: T tokens, K routing slots, E experts, N = T * K pairs, P padded rows, B blocks.

Skipped slots (keep False) never become rows, and an expert with no kept slot gets no
block, so neither is ever loaded. Buffer sizes are the worst case for (T, K, E, block_m),
not the data: every step of a decode loop has the same shapes, nothing waits for the
host, and the whole thing can be captured in a CUDA graph. Unused blocks at the tail are
marked expert -1; the kernels return from them before touching any weight.

Worst case: every expert that appears wastes at most block_m - 1 rows of padding, and at
most min(E, N) experts appear, so P = N + min(E, N) * (block_m - 1), rounded up to blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NO_ROW = -1  # pair index of a padding row
NO_EXPERT = -1  # expert of an unused block


@dataclass(frozen=True)
class MoeLayout:
    pairs: torch.Tensor  # P int32: flat (token * K + slot) of each row, NO_ROW for padding
    block_expert: torch.Tensor  # B int32: expert of each block of block_m rows, NO_EXPERT if unused
    used_blocks: torch.Tensor  # [1] int32, on the device: blocks holding at least one row
    block_m: int
    slots: int  # K, to recover token = pair // K

    @property
    def max_blocks(self) -> int:
        return self.block_expert.numel()


def max_blocks(tokens: int, slots: int, experts: int, block_m: int) -> int:
    """B: blocks in the worst case for these shapes (independent of the routing)."""
    n = tokens * slots
    return -(-(n + min(experts, n) * (block_m - 1)) // block_m)


def moe_layout(ids: torch.Tensor, keep: torch.Tensor | None, experts: int, block_m: int) -> MoeLayout:
    """(ids [T, K], keep [T, K] bool or None = keep all) -> MoeLayout for `experts` experts.

    Rows of one expert stay in token order (stable sort), so the layout is deterministic.
    Ids of skipped slots may be anything (e.g. an out-of-range sentinel): they are never read.
    """
    t, k = ids.shape
    n, dev = t * k, ids.device
    nb = max_blocks(t, k, experts, block_m)
    # Skipped slots go to bucket E, which gets no rows: it only keeps the sort honest.
    bucket = ids.reshape(-1).to(torch.int64).clamp(0, experts - 1)
    if keep is not None:
        bucket = torch.where(keep.reshape(-1), bucket, experts)  # N
    # scatter_add, not bincount: bincount sizes its output from the data (a host sync).
    counts = torch.zeros(experts + 1, dtype=torch.int64, device=dev)
    counts.scatter_add_(0, bucket, torch.ones_like(bucket))  # E+1
    blocks = (counts[:experts] + block_m - 1) // block_m  # E
    block_end = torch.cumsum(blocks, 0)  # E, inclusive
    row_start = (block_end - blocks) * block_m  # E, first padded row of each expert

    order = torch.argsort(bucket, stable=True)  # N, pairs grouped by expert, token order within
    sorted_bucket = bucket[order]
    first_of_bucket = torch.cumsum(counts, 0) - counts  # E+1, exclusive
    rank = torch.arange(n, device=dev) - first_of_bucket[sorted_bucket]  # N, position within its expert
    # Skipped pairs land in one extra row past the end, dropped below.
    dest = torch.where(sorted_bucket < experts, row_start.gather(0, sorted_bucket.clamp(max=experts - 1)) + rank,
                       nb * block_m)  # fmt: skip
    pairs = torch.full((nb * block_m + 1,), NO_ROW, dtype=torch.int32, device=dev)
    pairs.scatter_(0, dest, order.to(torch.int32))

    # Block b belongs to the first expert whose inclusive block count exceeds b.
    block_ids = torch.arange(nb, device=dev)
    owner = torch.searchsorted(block_end, block_ids, right=True)  # B, E for unused blocks
    block_expert = torch.where(owner < experts, owner, NO_EXPERT).to(torch.int32)
    return MoeLayout(pairs[:-1], block_expert, block_end[-1:].to(torch.int32), block_m, k)


def with_shared_expert(
    ids: torch.Tensor, weights: torch.Tensor, keep: torch.Tensor | None, shared_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Add the shared expert as one more slot (id `shared_id`, weight 1, always kept).

    With its weights stacked after the routed experts (stack_shared_expert), the shared
    expert then runs in the same launches as the routed ones. Returns [T, K+1] each.
    """
    t = ids.shape[0]
    if keep is None:
        keep = torch.ones_like(ids, dtype=torch.bool)
    col = torch.full((t, 1), shared_id, dtype=ids.dtype, device=ids.device)
    return (
        torch.cat([ids, col], 1),
        torch.cat([weights, torch.ones(t, 1, dtype=weights.dtype, device=weights.device)], 1),
        torch.cat([keep, torch.ones(t, 1, dtype=torch.bool, device=keep.device)], 1),
    )


def stack_shared_expert(routed: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """[E, ...] routed expert tensor + [...] shared expert tensor -> [E+1, ...]. Once, at load time."""
    return torch.cat([routed, shared.to(routed.dtype)[None]], 0)
