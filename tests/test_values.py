"""The value codec's trusted half on hostile bytes: decoding is linear, bounded in memory by
the budget, and never runs a quadratic step (gcd, hash-colliding sets) on our side. Caps are
scaled down so each attack stays small; on a415ab4 each of these froze or bloated the stage
(`decode(json.loads(...))`: seconds of GIL-held gcd, quadratic set building, ~90x memory)."""

import json
import random
import time
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest

from skipbench.execute.compare import outputs_match
from skipbench.execute.values import MAX_SAME_HASH, ValueBudget, decode, encode, loads, max_nodes

M61 = (1 << 61) - 1  # ints k * M61 all hash to 0
CAP = 1 << 20  # a 1 MiB byte cap for the tests (the profile's default is 64 MiB)


def dumps(v):
    return json.dumps(encode(v)).encode()


def test_round_trip_of_every_tag():
    values = [1, 10**1200, -(10**1200), 1.5, "s", None, True, [1, [2]], (1, 2), {1, 2}, frozenset({3}), {(1, 2): [3]},
              2j, b"\x00\xff", Fraction(3, 7), np.float64(0.1), np.float32(0.5), np.int64(-3), np.bool_(True), np.complex64(1j)]  # fmt: skip
    for v in values:
        got = loads(dumps(v), max_nodes(CAP))
        assert got == v and type(got) is type(v), v
        assert decode(encode(v)) == v


def test_unnormalised_fraction_of_megabit_terms_costs_no_gcd():
    rng = random.Random(0)
    n, d = rng.getrandbits(1 << 20) | 1, rng.getrandbits(1 << 20) | 1  # gcd of these: ~4 s on main
    payload = json.dumps({"fraction": [{"bigint": format(n, "x")}, {"bigint": format(d, "x")}]}).encode()
    t0 = time.thread_time()
    got = loads(payload, max_nodes(CAP))
    assert time.thread_time() - t0 < 2.0  # quadratic: ~10 s; loaded machines stretch CPU time too
    assert type(got) is Fraction and got.numerator == n and float(got) == n / d


@pytest.mark.parametrize("tag", ["set", "frozenset", "dict"])
def test_hash_colliding_keys_are_refused_in_linear_time(tag):
    keys = [k * M61 for k in range(1, 20001)]  # 20000 keys in one hash chain: ~10 s to build on main
    body = [[{"bigint": format(k, "x")} if k >= 10**1000 else k, 0] for k in keys] if tag == "dict" else keys
    t0 = time.thread_time()
    with pytest.raises(ValueBudget):
        loads(json.dumps({tag: body}).encode(), max_nodes(CAP))
    assert time.thread_time() - t0 < 2.0  # quadratic: ~10 s; loaded machines stretch CPU time too
    few = keys[:MAX_SAME_HASH]  # a handful of equal hashes is ordinary (hash(-1) == hash(-2))
    assert loads(json.dumps({tag: [[k, 0] for k in few] if tag == "dict" else few}).encode(), max_nodes(CAP))


def test_set_equality_oracle_refuses_colliding_lists():
    out = [k * M61 for k in range(1, 20001)]
    t0 = time.thread_time()
    assert not outputs_match("mbpp", "similar_elements", [], out, {1}, 0)
    assert time.thread_time() - t0 < 2.0  # quadratic: ~10 s; loaded machines stretch CPU time too


@pytest.mark.parametrize("shape", ["[[]]", "[[[0, 0]]]", "[1.5]", "[\"ab\"]", "{\"tuple\": [[]]}", "{\"set\": [0]}"])
def test_peak_memory_is_a_small_multiple_of_the_cap(shape):
    """The densest values of each shape that fit the budget peak below 8x the byte cap (main
    decoded twice, ~90x for nested lists); one more element is refused before parsing."""
    unit = json.loads(shape)
    inner = unit[0] if type(unit) is list else unit
    budget = max_nodes(CAP)
    per = 1 + json.dumps(inner).count(",") + json.dumps(inner).count("[") + 2 * json.dumps(inner).count("{")
    k = (budget - 1) // per
    payload = ("[" + ", ".join([json.dumps(inner)] * k) + "]").encode()
    tracemalloc.start()
    try:
        loads(payload, budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(payload) <= CAP and peak < 8 * CAP, (shape, peak / CAP)
    with pytest.raises(ValueBudget):
        loads(("[" + ", ".join([json.dumps(inner)] * (k + 1)) + "]").encode(), budget)


def test_numpy_scalars_keep_their_type_as_evalplus_compares_them():
    """EvalPlus compares the candidate's numpy scalar itself: np.float64 == a big int is
    numpy's comparison (true here, false for the plain float main made of it), and a
    non-exact np.float64 answer to a float task fails the type check of the tolerance path."""
    big = 10**20 + 1
    got = loads(dumps(np.float64(1e20)), max_nodes(CAP))
    assert outputs_match("humaneval", "f", [], got, big, 0)
    assert not outputs_match("humaneval", "f", [], float(got), big, 0)
    mean = loads(dumps(np.mean([0.1, 0.2, 0.4])), max_nodes(CAP))
    assert not outputs_match("humaneval", "f", [], mean, 0.7 / 3 + 1e-12, 0)
    assert outputs_match("humaneval", "f", [], float(mean), 0.7 / 3 + 1e-12, 0)
