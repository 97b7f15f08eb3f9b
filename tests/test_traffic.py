"""Distinct-expert counting against a brute-force replay with Python sets."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skipbench.io import read_table
from skipbench.infer.traces import TRACE_SCHEMA
from skipbench.skip.strategies import SkipRule
from skipbench.speed.traffic import (ALL_LAYERS, TRAFFIC_SCHEMA, batch_aware_kept, refill_schedule, traffic_table,
                                     write_traffic)


def quantile(xs, q):
    """Linear interpolation between order statistics, written out."""
    xs = sorted(xs)
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    return xs[lo] + (h - lo) * (xs[min(lo + 1, len(xs) - 1)] - xs[lo])


def brute_force(rows: list[dict], c: int) -> dict:
    """{layer: (tokens/step, slots/step, distinct mean, p50, p90, experts/token)}, layer -1 = layer mean.

    Continuous batching written out: min(c, samples) slots, tick by tick; a slot whose
    sequence ended takes the next sample (cycling) that no other slot is decoding at that
    tick; ceil(decode tokens / slots) ticks."""
    order = {}
    for r in rows:
        order.setdefault((r["task_id"], r["sample_id"]), len(order))
    seqs = defaultdict(dict)  # sample -> {decode position: [rows of its layers]}
    for r in rows:
        if r["position"] >= 1:
            seqs[order[(r["task_id"], r["sample_id"])]].setdefault(r["position"] - 1, []).append(r)
    queue = [s for s in range(len(order)) if s in seqs]
    c = min(c, len(queue))
    n_ticks = -(-sum(len(v) for v in seqs.values()) // c)
    slots, nxt = [None] * c, 0  # slot -> (sample, next decode position)
    steps = defaultdict(list)  # (tick, layer) -> rows of the tokens in that step
    for tick in range(n_ticks):
        for i in range(c):
            if slots[i] is None or slots[i][1] >= len(seqs[slots[i][0]]):
                running = {s[0] for j, s in enumerate(slots) if j != i and s is not None and s[1] < len(seqs[s[0]])}
                while queue[nxt % len(queue)] in running:
                    nxt += 1
                slots[i] = (queue[nxt % len(queue)], 0)
                nxt += 1
        for i in range(c):  # every slot refilled first: a slot's last token still occupies this tick
            sample, pos = slots[i]
            for r in seqs[sample][pos]:
                steps[(tick, r["layer"])].append(r)
            slots[i] = (sample, pos + 1)

    def kept(r):
        return [e for k, e in enumerate(r["expert_ids"]) if r["keep"] >> k & 1]

    per_step = {key: (len(rs), sum(len(kept(r)) for r in rs), len({e for r in rs for e in kept(r)}))
                for key, rs in steps.items()}  # fmt: skip
    by_layer = defaultdict(list)
    by_step = defaultdict(list)
    for (tick, layer), v in per_step.items():
        by_layer[layer].append(v)
        by_step[tick].append(v)
    layer_mean = {ALL_LAYERS: [tuple(sum(x) / len(vs) for x in zip(*vs)) for vs in by_step.values()]}
    out = {}
    for layer, vs in (by_layer | layer_mean).items():
        tokens, slots_, distinct = zip(*vs)
        out[layer] = (sum(tokens) / len(vs), sum(slots_) / len(vs), sum(distinct) / len(vs),
                      quantile(distinct, 0.5), quantile(distinct, 0.9), sum(slots_) / sum(tokens))  # fmt: skip
    return out


@st.composite
def traces(draw):
    k = draw(st.integers(1, 4))
    n_exp = draw(st.integers(k, 10))
    layers = sorted(draw(st.sets(st.integers(0, 5), min_size=1, max_size=3)))
    rows = []
    for s in range(draw(st.integers(1, 5))):
        task, sample = f"T/{s % 3}", s // 3  # two samples of one task must stay distinct samples
        for pos in range(draw(st.integers(2 if s == 0 else 1, 6))):  # sample 0 has a decode token
            for layer in layers:
                ids = draw(st.permutations(range(n_exp)))[:k]
                rows.append(dict(task_id=task, sample_id=sample, position=pos, layer=layer, expert_ids=ids,
                                 keep=draw(st.integers(0, 2**k - 1)),
                                 weights=draw(st.lists(st.floats(0.0625, 1.0, width=32), min_size=k, max_size=k))))
    return draw(st.permutations(rows))  # row order must not matter beyond first appearance


@settings(max_examples=60, deadline=None)
@given(rows=traces(), concurrency=st.lists(st.integers(1, 6), min_size=1, max_size=3, unique=True))
def test_matches_brute_force(rows, concurrency):
    table = pa.Table.from_pylist(rows, schema=TRACE_SCHEMA)
    got = traffic_table(table, "v", concurrency, bytes_per_expert=1000)
    k = len(rows[0]["expert_ids"])
    for c in concurrency:
        want = brute_force(rows, c)
        sub = got[got["concurrency"] == c].set_index("layer")
        assert set(sub.index) == set(want)
        for layer, (tokens, slots, mean, p50, p90, ept) in want.items():
            row = sub.loc[layer]
            assert row["tokens_per_step"] == pytest.approx(tokens)
            assert row["slots_per_step"] == pytest.approx(slots)
            assert row["distinct_mean"] == pytest.approx(mean)
            assert row["distinct_p50"] == pytest.approx(p50)
            assert row["distinct_p90"] == pytest.approx(p90)
            assert row["experts_per_token"] == pytest.approx(ept)
            assert row["skip_rate"] == pytest.approx(1 - ept / k)
            assert row["bytes_per_step"] == pytest.approx(mean * 1000)


def _row(task, pos, layer, ids, keep, sample=0, weights=None):
    weights = [1.0 - 0.1 * k for k in range(len(ids))] if weights is None else weights  # slot order = rank
    return dict(task_id=task, sample_id=sample, position=pos, layer=layer, expert_ids=ids, keep=keep, weights=weights)


def test_batch_aware_masks_recomputed_for_each_replayed_batch():
    # OEA, k0 = 1, K = 2, recorded at some other batch with every slot kept (0b11).
    # A's token: experts 0 (0.6), 1 (0.4); B's: 1 (0.7), 2 (0.3).
    rows = [_row("A", 0, 3, [0, 1], 0b11, weights=[0.6, 0.4]), _row("A", 1, 3, [0, 1], 0b11, weights=[0.6, 0.4]),
            _row("B", 0, 3, [1, 2], 0b11, weights=[0.7, 0.3]), _row("B", 1, 3, [1, 2], 0b11, weights=[0.7, 0.3])]
    oea = SkipRule("batch_aware", k0=1)
    got = traffic_table(pd.DataFrame(rows), "oea1", [1, 2], 1, oea).set_index(["concurrency", "layer"])
    # c = 1: each token alone is top-k0: A {0}, B {1}
    assert got.loc[(1, 3), "distinct_mean"] == 1.0 and got.loc[(1, 3), "experts_per_token"] == 1.0
    # c = 2, one step: A keeps 0 and piggybacks on 1 (B's top-1, loaded anyway); B keeps 1, not 2
    assert got.loc[(2, 3), "distinct_mean"] == 2.0 and got.loc[(2, 3), "slots_per_step"] == 3.0
    # the prefill rows are not replayed: reported as recorded
    assert (got["prefill_experts_per_token"] == 2.0).all()
    # any other strategy replays its recorded masks
    other = traffic_table(pd.DataFrame(rows), "top1", [1], 1, SkipRule("topk", k=1))
    assert other[other["layer"] == 3]["distinct_mean"].iloc[0] == 2.0


def test_batch_aware_in_bounded_groups_of_batches_equals_one_call():
    rng = np.random.default_rng(0)
    ids = np.argsort(rng.random((300, 16)), -1)[:, :4]  # M=300 rows, E=16, K=4
    weights, batch = rng.random((300, 4)).astype(np.float32), rng.integers(0, 40, 300)
    whole = batch_aware_kept(2, weights, ids, batch)
    assert np.array_equal(whole, batch_aware_kept(2, weights, ids, batch, table=16 * 3))  # 3 batches a call
    alone = [batch_aware_kept(2, weights[batch == b], ids[batch == b], np.zeros((batch == b).sum(), np.int64))
             for b in range(40)]  # each batch by itself
    assert all(np.array_equal(whole[batch == b], a) for b, a in enumerate(alone))
    assert whole.sum(1).min() >= 2 and whole.sum() > 2 * 300  # top-2 plus some piggybacking


@settings(max_examples=40, deadline=None)
@given(rows=traces(), k0=st.integers(1, 4))
def test_batch_aware_at_batch_one_is_top_k0(rows, k0):
    k = len(rows[0]["expert_ids"])
    table = pa.Table.from_pylist(rows, schema=TRACE_SCHEMA)
    got = traffic_table(table, "oea", [1, 3], 1, SkipRule("batch_aware", k0=k0))
    one = got[got["concurrency"] == 1]
    assert (one["experts_per_token"] == min(k0, k)).all() and (one["distinct_mean"] == min(k0, k)).all()
    many = got[got["concurrency"] == 3]
    assert (many["experts_per_token"] >= min(k0, k)).all()


def test_hand_computed_refill_keeps_load_constant():
    # decode tokens (position >= 1): A has 2, B has 1; top-2 of 4 experts, one MoE layer (3)
    rows = [
        _row("A", 0, 3, [0, 1], 0b11),  # prefill: not a decode token
        _row("A", 1, 3, [0, 1], 0b11),
        _row("A", 2, 3, [2, 3], 0b01),  # slot 1 (expert 3) skipped
        _row("B", 0, 3, [3, 2], 0b01),  # prefill
        _row("B", 1, 3, [1, 2], 0b11),
    ]
    got = traffic_table(pd.DataFrame(rows), "v", [1, 2], bytes_per_expert=10).set_index(["concurrency", "layer"])
    # c=1: steps {0,1} | {2} | {1,2} -> distinct 2, 1, 2
    assert got.loc[(1, 3), "steps"] == 3
    assert got.loc[(1, 3), "distinct_mean"] == pytest.approx(5 / 3)
    # the distribution of k: A1 and B1 keep 2 slots, A2 keeps 1 (decode tokens only), per layer and pooled
    assert got.loc[(1, 3), "kept_histogram"] == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert got.loc[(1, -1), "kept_histogram"] == pytest.approx([0.0, 1 / 3, 2 / 3])
    # c=2, 2 steps: step 0 = A1 + B1 -> {0,1,2}; step 1: B ended, its slot refills with the
    # next sample no slot decodes: A is still running, so B again: A2 + B1 -> {2} | {1,2} =
    # 2 distinct, 2 tokens (no drain to 1 token, no sequence twice in a step)
    assert got.loc[(2, 3), "steps"] == 2
    assert got.loc[(2, 3), "tokens_per_step"] == 2.0
    assert got.loc[(2, 3), "distinct_mean"] == pytest.approx(2.5)
    assert got.loc[(2, 3), "experts_per_token"] == pytest.approx(7 / 4)
    assert got.loc[(2, 3), "bytes_per_step"] == pytest.approx(25.0)
    assert (got["distinct_sequences"] == 2).all() and (got["c_effective"] == got.index.get_level_values(0)).all()
    assert (got["decode_tokens"] == 3).all()
    assert (got["prefill_experts_per_token"] == 1.5).all()  # prefill rows: 2 and 1 kept slots


def test_refill_load_is_constant_whatever_the_lengths():
    # eight samples of very different lengths: every step holds exactly c tokens
    rows = [_row(f"T{s}", p, 1, [p % 5, 5 + s], 0b11) for s in range(8) for p in range(1 + 3 * s + 1)]
    got = traffic_table(pd.DataFrame(rows), "v", [1, 3, 16], bytes_per_expert=1)
    assert (got["c_effective"] == got["concurrency"].clip(upper=8)).all()  # 8 sequences: at most 8 slots
    assert (got["tokens_per_step"] == got["c_effective"]).all()
    assert got.set_index("concurrency").loc[3, "steps"].iloc[0] == -(-sum(3 * s + 1 for s in range(8)) // 3)


def test_more_slots_than_sequences_never_holds_one_sequence_twice():
    # c = 16 over 10 sequences of different lengths (the default run: 10 tasks at c = 16).
    # Each sequence routes to an expert of its own, so a step's distinct experts are its
    # distinct sequences: a sequence in two slots would give fewer distinct than tokens.
    lengths = np.array([3, 40, 7, 12, 25, 5, 9, 31, 2, 18])
    rows = [_row(f"T{s}", p, 1, [s], 0b1) for s, n in enumerate(lengths) for p in range(n + 1)]
    samples, starts, n_steps = refill_schedule(lengths, 16)
    occupied = np.zeros((n_steps, len(lengths)), np.int64)  # [S, n] slots a sequence holds per step
    for s, t in zip(samples, starts):
        occupied[t : t + lengths[s], s] += 1
    assert occupied.max() == 1 and (occupied.sum(1) == 10).all()
    got = traffic_table(pd.DataFrame(rows), "v", [16], bytes_per_expert=1)
    row = got[got["layer"] == ALL_LAYERS].iloc[0]
    assert row["distinct_sequences"] == 10 and row["c_effective"] == 10 and row["concurrency"] == 16
    assert row["tokens_per_step"] == 10 and row["distinct_mean"] == 10  # one expert per independent token


def test_all_skipped_step_counts_zero_distinct():
    rows = [_row("A", 0, 1, [0, 1], 0b11), _row("A", 1, 1, [0, 1], 0), _row("A", 2, 1, [0, 1], 0b10)]
    got = traffic_table(pd.DataFrame(rows), "v", [1], bytes_per_expert=1)
    row = got[got["layer"] == 1].iloc[0]
    assert row["steps"] == 2 and row["distinct_mean"] == 0.5 and row["skip_rate"] == 0.75


def test_samples_refill_in_order_of_first_appearance():
    # C appears first, so at c=2 the slots take C and A first; B enters when C ends
    rows = [_row(n, p, 1, [e + p], 1) for n, e, length in (("C", 10, 1), ("A", 20, 2), ("B", 30, 1))
            for p in range(length + 1)]  # fmt: skip
    got = traffic_table(pd.DataFrame(rows), "v", [2], bytes_per_expert=1)
    # step 0: C1 (11), A1 (21); step 1: B1 (31), A2 (22) -> 2 distinct each
    assert got[got["layer"] == 1]["distinct_mean"].iloc[0] == pytest.approx(2.0)


def test_rejects_ragged_slots_and_empty():
    with pytest.raises(ValueError, match="same length K"):
        traffic_table(pd.DataFrame([_row("A", 0, 1, [0, 1], 3), _row("A", 1, 1, [0], 1)]), "v", [1], 1)
    with pytest.raises(ValueError, match="weights must have K"):
        traffic_table(pd.DataFrame([_row("A", 0, 1, [0, 1], 3), _row("A", 1, 1, [0, 1], 1, weights=[1.0])]),
                      "v", [1], 1)
    with pytest.raises(ValueError, match="empty"):
        traffic_table(TRACE_SCHEMA.empty_table(), "v", [1], 1)
    with pytest.raises(ValueError, match="concurrency"):
        traffic_table(pd.DataFrame([_row("A", 0, 1, [0], 1), _row("A", 1, 1, [0], 1)]), "v", [0], 1)
    with pytest.raises(ValueError, match="no decode tokens"):
        traffic_table(pd.DataFrame([_row("A", 0, 1, [0], 1)]), "v", [1], 1)


def test_write_traffic_schema(tmp_path):
    import pyarrow.parquet as pq

    rows = [_row("A", p, layer, [p % 4, 4 + layer], 0b11) for p in range(3) for layer in (1, 2)]
    paths = {}
    for variant, keep in (("dense", 0b11), ("top1", 0b01)):
        paths[variant] = tmp_path / f"{variant}.parquet"
        pq.write_table(pa.Table.from_pylist([r | {"keep": keep} for r in rows], schema=TRACE_SCHEMA), paths[variant])
    table = write_traffic(paths, [1, 4], 100, tmp_path / "traffic.parquet")
    back = read_table(tmp_path / "traffic.parquet", TRAFFIC_SCHEMA).to_pandas()
    assert table.num_rows == len(back) == 2 * 2 * 3  # variants x concurrencies x (2 layers + mean)
    top1 = back[(back["variant"] == "top1") & (back["layer"] == ALL_LAYERS)]
    assert (top1["experts_per_token"] == 1.0).all() and (top1["skip_rate"] == 0.5).all()
