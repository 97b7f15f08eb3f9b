"""Routing traces: packing, step assembly, TRACE_SCHEMA output, size, and what traffic.py reads back."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from skipbench.infer.traces import SampleTrace, assemble_steps, pack_keep, trace_table, unpack_keep, write_trace
from skipbench.infer.traces import TRACE_SCHEMA
from skipbench.speed.traffic import trace_arrays


def test_pack_round_trip():
    rng = np.random.default_rng(0)
    keep = rng.random((50, 8)) < 0.5
    packed = pack_keep(keep)
    assert packed.dtype == np.uint32 and packed[0] == sum(1 << k for k in range(8) if keep[0, k])
    assert np.array_equal(unpack_keep(packed, 8), keep)
    assert pack_keep(np.ones((1, 32), bool))[0] == 2**32 - 1


def test_assemble_steps_maps_rows_to_samples_and_steps():
    # two samples, two layers, K=2. Step 0: a prefill of 3 rows (sample 0 at row 1,
    # sample 1 at row 2); step 1: rows swapped; sample 1 stops after 1 token.
    def call(t, base):
        ids = np.arange(t * 2).reshape(t, 2) + base
        return (ids, ids / 1000.0, np.ones((t, 2), bool))

    calls = [[call(3, 0), call(3, 100)], [call(2, 10), call(2, 110)]]
    layouts = [np.array([[0, 1, 0], [1, 2, 0]]), np.array([[1, 0, 1], [0, 1, 1]])]
    (ids0, w0, keep0), (ids1, _, _) = assemble_steps(calls, layouts, [2, 1])
    assert ids0.shape == (2, 2, 2) and ids1.shape == (1, 2, 2) and keep0.all()
    assert ids0[0, 0].tolist() == [2, 3] and ids0[0, 1].tolist() == [102, 103]  # step 0, row 1
    assert np.allclose(w0, ids0 / 1000.0) and w0.dtype == np.float32  # weights travel with their slots
    assert ids0[1, 0].tolist() == [12, 13]  # step 1, row 1
    assert ids1[0, 0].tolist() == [4, 5]  # sample 1's step 1 (row 0) is past its length: dropped
    with pytest.raises(ValueError, match="not recorded"):
        assemble_steps(calls[:1], layouts[:1], [2, 1])


def test_trace_table_reads_back_in_traffic(tmp_path):
    rng = np.random.default_rng(1)
    samples = [SampleTrace(f"T/{i}", 0, (3, 4), rng.integers(0, 256, (n, 2, 8)), rng.random((n, 2, 8)) < 0.7,
                           rng.random((n, 2, 8)).astype(np.float32)) for i, n in enumerate([5, 3])]
    write_trace(tmp_path / "t.parquet", samples)
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.schema.equals(TRACE_SCHEMA) and table.num_rows == (5 + 3) * 2
    a = trace_arrays(table)
    assert a["position"][:4].tolist() == [0, 0, 1, 1] and a["layer"][:4].tolist() == [3, 4, 3, 4]
    assert np.array_equal(a["ids"][:10], samples[0].ids.reshape(10, 8))
    assert np.array_equal(a["kept"][10:], samples[1].keep.reshape(6, 8))
    assert np.array_equal(a["weights"][10:], samples[1].weights.reshape(6, 8))
    assert trace_table([]).num_rows == 0


def test_bytes_per_token_per_layer_on_deepseek_v3_shape(tmp_path):
    # random routing (worst case for compression): E=256, K=8, 58 MoE layers, 16 samples x 200 tokens
    rng = np.random.default_rng(2)
    layers = tuple(range(3, 61))
    def weights():  # the router's top-8 of 256 sigmoid scores, normalised, times 2.5
        w = np.sort(1 / (1 + np.exp(-rng.normal(size=(200, 58, 256)))), -1)[..., :-9:-1]
        return (2.5 * w / w.sum(-1, keepdims=True)).astype(np.float32)

    samples = [SampleTrace(f"HumanEval/{i}", 0, layers,
                           np.argsort(rng.random((200, 58, 256)), -1)[..., :8], rng.random((200, 58, 8)) < 0.8,
                           weights()) for i in range(16)]
    write_trace(tmp_path / "t.parquet", samples)
    per_row = (tmp_path / "t.parquet").stat().st_size / (16 * 200 * 58)
    print(f"{per_row:.1f} B per token per layer")
    # 8 ids of 8 bits of entropy are 8 B, 8 float32 weights close to 32 B; traces.py gives the figure
    assert 36 < per_row < 46
