"""Routing -> block layout (kernels/layout.py): every kept pair once, skipped never, sizes fixed."""

import os

import pytest
import torch

from skipbench_kernels.layout import NO_EXPERT, NO_ROW, max_blocks, moe_layout, stack_shared_expert, with_shared_expert
from skipbench_kernels.reference import moe_reference


def _routing(t, k, e, p_keep, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)])
    keep = torch.rand(t, k, generator=g) < p_keep
    return ids, keep


def _check_layout(ids, keep, e, block_m):
    t, k = ids.shape
    lay = moe_layout(ids, keep, e, block_m)
    pairs, block_expert = lay.pairs.long(), lay.block_expert.long()
    assert pairs.numel() == lay.max_blocks * block_m == max_blocks(t, k, e, block_m) * block_m
    flat_ids, flat_keep = ids.reshape(-1), keep.reshape(-1)
    real = pairs[pairs != NO_ROW]
    # every kept pair exactly once, no skipped pair at all
    assert sorted(real.tolist()) == torch.nonzero(flat_keep).flatten().tolist()
    rows = pairs.view(-1, block_m)
    used = int(lay.used_blocks)
    assert torch.all(block_expert[:used] >= 0) and torch.all(block_expert[used:] == NO_EXPERT)
    assert torch.all(rows[used:] == NO_ROW)  # unused tail blocks hold no row
    for b in range(used):
        r = rows[b][rows[b] != NO_ROW]
        assert r.numel() > 0, "a used block holds at least one row"
        assert torch.all(flat_ids[r] == block_expert[b])
        # padding only at the end of a block, rows of an expert in token order
        assert torch.all(rows[b][: r.numel()] == r) and torch.all(r[1:] > r[:-1])
    # an expert's blocks are contiguous, and only experts with a kept slot have blocks
    experts_with_blocks = block_expert[:used].unique_consecutive()
    assert experts_with_blocks.numel() == block_expert[:used].unique().numel()
    kept_experts = flat_ids[flat_keep].unique()
    assert experts_with_blocks.tolist() == kept_experts.sort().values.tolist()
    counts = torch.bincount(flat_ids[flat_keep], minlength=e)
    assert used == int(((counts + block_m - 1) // block_m).sum())
    return lay


@pytest.mark.parametrize("t,k,e,block_m,p_keep", [(1, 8, 256, 16, 1.0), (5, 3, 6, 4, 0.6), (40, 2, 4, 16, 0.8),
                                                  (64, 8, 16, 16, 0.3), (7, 4, 300, 32, 0.5)])
def test_layout_holds_kept_pairs_once_grouped_by_expert(t, k, e, block_m, p_keep):
    for seed in range(3):
        _check_layout(*_routing(t, k, e, p_keep, seed), e, block_m)


def test_buffer_sizes_depend_on_shapes_not_on_routing():
    ids, _ = _routing(32, 4, 8, 1.0, 0)
    sizes = set()
    for keep in (torch.ones_like(ids, dtype=torch.bool), torch.zeros_like(ids, dtype=torch.bool),
                 _routing(32, 4, 8, 0.3, 1)[1]):
        lay = _check_layout(ids, keep, 8, 16)
        sizes.add((lay.pairs.shape, lay.block_expert.shape))
    assert len(sizes) == 1


def test_everything_skipped_leaves_no_block():
    ids, _ = _routing(4, 2, 8, 1.0, 0)
    lay = moe_layout(ids, torch.zeros_like(ids, dtype=torch.bool), 8, 16)
    assert int(lay.used_blocks) == 0 and torch.all(lay.block_expert == NO_EXPERT) and torch.all(lay.pairs == NO_ROW)


def test_skipped_slots_may_carry_out_of_range_ids():
    ids = torch.tensor([[0, 8], [-1, 3]])  # 8 == E and -1: sentinels some engines use for a skip
    keep = torch.tensor([[True, False], [False, True]])
    lay = _check_layout(ids, keep, 8, 4)
    assert lay.block_expert[:2].tolist() == [0, 3]


def test_worst_case_is_reached_and_never_exceeded():
    # every expert gets exactly one pair: maximal padding
    ids = torch.arange(16).view(8, 2)
    lay = _check_layout(ids, torch.ones_like(ids, dtype=torch.bool), 16, 16)
    assert int(lay.used_blocks) == lay.max_blocks == 16


def test_shared_expert_rides_along_as_one_more_expert():
    g = torch.Generator().manual_seed(0)
    t, h, i, e, k = 5, 16, 8, 4, 2
    x = torch.randn(t, h, generator=g, dtype=torch.float64)
    w13, w2 = torch.randn(e, 2 * i, h, generator=g, dtype=torch.float64), torch.randn(e, h, i, generator=g, dtype=torch.float64)
    s13, s2 = torch.randn(2 * i, h, generator=g, dtype=torch.float64), torch.randn(h, i, generator=g, dtype=torch.float64)
    ids, keep = _routing(t, k, e, 0.5, 2)
    w = torch.rand(t, k, generator=g, dtype=torch.float64)
    routed = moe_reference(x, w13, w2, ids, w, keep, compute_dtype=torch.float64)
    gate, up = (x @ s13.T).chunk(2, -1)
    shared = (torch.nn.functional.silu(gate) * up) @ s2.T
    ids1, w1, keep1 = with_shared_expert(ids, w, keep, shared_id=e)
    both = moe_reference(x, stack_shared_expert(w13, s13), stack_shared_expert(w2, s2), ids1, w1, keep1,
                         compute_dtype=torch.float64)
    torch.testing.assert_close(both, routed + shared)
    assert int(_check_layout(ids1, keep1, e + 1, 4).block_expert.eq(e).sum()) == 2  # 5 tokens, blocks of 4


triton_here = pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET")),
                                 reason="Triton needs a GPU or its interpreter")  # fmt: skip


@triton_here
@pytest.mark.parametrize("t,k,e,block_m,p_keep", [(1, 8, 256, 8, 1.0), (5, 3, 6, 4, 0.6), (40, 2, 4, 16, 0.8),
                                                  (3, 4, 300, 32, 0.5), (4, 2, 8, 16, 0.0)])
def test_the_one_launch_layout_matches_the_reference_layout(t, k, e, block_m, p_keep):
    """prepare.py's single-CTA layout: same blocks, experts and used count as moe_layout,
    and the same pairs in each block (their order within an expert may differ on a GPU)."""
    from skipbench_kernels.prepare import layout_on_device

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for seed in range(2):
        ids, keep = _routing(t, k, e, p_keep, seed)
        if seed:
            ids = torch.where(keep, ids, e)  # skipped slots may carry out-of-range ids
        ref = moe_layout(ids, keep, e, block_m)
        got = layout_on_device(ids.to(dev), keep.to(dev), e, block_m)
        assert int(got.used_blocks) == int(ref.used_blocks)
        assert torch.equal(got.block_expert.cpu(), ref.block_expert)
        rows_got, rows_ref = got.pairs.cpu().view(-1, block_m), ref.pairs.view(-1, block_m)
        assert torch.equal(rows_got.sort(1).values, rows_ref.sort(1).values)
    # keep None: every slot whose id is in range (a sentinel id is a skip here, not clamped)
    everything = layout_on_device(ids.to(dev), None, e, block_m)
    assert int(everything.used_blocks) == int(moe_layout(ids, ids < e, e, block_m).used_blocks)
