"""Routing traces: what the router did for every generated token, in TRACE_SCHEMA.

Engines record, per router call and MoE layer, the experts the rule left in each slot
(ids [T,K]), their weights before skipping (slot_weights, [T,K]) and which slots ran
(keep [T,K]); what the batch-aware rule decided depends on the batch, so keep is what
actually ran in that batch, and the weights let traffic.py decide it for another batch. Engines then cut the calls
into samples: decode step j of a sample is the forward pass that produced its j-th
generated token (step 0 is the prompt's last token, computed in the prefill), which is
the unit traffic.py batches at other concurrencies. A sample with N generated tokens
has N steps (its last token is never fed back).

Size on DeepSeek-V3 (K = 8, 58 MoE layers): one row per (token, layer) holds K int16
ids + K float32 weights + a uint32 bitmask + int32 position + int16 layer + int32 sample
+ the task id, 70 B in Arrow memory with the list offsets. Parquet dictionary-encodes the
ids (at most 256 distinct values: 1 byte each) and run-length encodes the rest; the
weights barely compress: 44 B per token per layer on random routing (tests/test_traces.py;
real routing compresses better), i.e. ~2.6 kB per generated token for the whole model.
Weights are float32, as the routers give them, so that a batch_aware mask recomputed from
them (traffic.py) ranks the slots as the engine did; float16 would take ~26 B and could
tie near-equal weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from skipbench.io import read_table, write_table
from skipbench.skip.strategies import REROUTE

# One row per (sample, generated token, MoE layer): written by the inference stage, read by
# speed/traffic.py and speed/replay.py. About 6K + 18 bytes per token per layer before
# Parquet compression: ~66 B on DeepSeek-V3 (K = 8); the trace files show the compressed size.
TRACE_SCHEMA = pa.schema(
    [
        ("task_id", pa.string()),  # benchmark task, e.g. "HumanEval/0"
        ("sample_id", pa.int32()),  # sample index within the task (pass@k draws)
        ("position", pa.int32()),  # index of the generated token, 0 = first generated
        ("layer", pa.int16()),  # MoE layer index in the model (not counting from first MoE)
        ("expert_ids", pa.list_(pa.int16())),  # [K] the router's chosen experts, slot order
        ("keep", pa.uint32()),  # bit k set = slot k computed, clear = skipped
        # [K] slot weights before any slot is skipped (traces.slot_weights): what batch_aware
        # re-decides from when the replay batches the tokens differently
        ("weights", pa.list_(pa.float32())),
    ]
)


@dataclass(frozen=True)
class SampleTrace:
    """Routing of one generated sample: N decode steps, L MoE layers, K slots."""

    task_id: str
    sample_id: int
    layers: tuple[int, ...]  # [L] model layer index of each MoE layer
    ids: np.ndarray  # [N, L, K] expert id per slot, as the rule left it
    keep: np.ndarray  # [N, L, K] bool: slot computed
    weights: np.ndarray  # [N, L, K] float: slot weights before skipping (slot_weights)

    def __post_init__(self):
        n, l, k = self.ids.shape
        if self.keep.shape != (n, l, k) or self.weights.shape != (n, l, k) or len(self.layers) != l:
            raise ValueError(f"trace shapes disagree: ids {self.ids.shape}, keep {self.keep.shape}, "
                             f"weights {self.weights.shape}, {len(self.layers)} layers")
        if k > 32:
            raise ValueError(f"keep is a uint32 bitmask: at most 32 slots, got K={k}")


def slot_weights(strategy: str, router_weights, applied_weights):
    """The weights a trace keeps for its slots [T,K]: the router's own top-K weights, before
    any slot is skipped (what a masking rule, batch_aware included, decides from), except
    for the re-routing strategies, whose slots are a new selection: there the weights as
    applied (0 in a slot the selection left empty)."""
    return applied_weights if strategy in REROUTE else router_weights


def pack_keep(keep: np.ndarray) -> np.ndarray:
    """[..., K] bool -> [...] uint32 with bit k set iff slot k is kept."""
    bits = np.left_shift(np.uint32(1), np.arange(keep.shape[-1], dtype=np.uint32))  # [K]
    return (keep.astype(np.uint32) * bits).sum(-1, dtype=np.uint32)


def unpack_keep(mask: np.ndarray, k: int) -> np.ndarray:
    """[...] uint32 -> [..., K] bool (inverse of pack_keep)."""
    return ((mask[..., None].astype(np.uint64) >> np.arange(k, dtype=np.uint64)) & 1).astype(bool)


def trace_table(samples: list[SampleTrace]) -> pa.Table:
    """TRACE_SCHEMA rows for `samples`, ordered by sample, position, layer."""
    cols = {name: [] for name in ("task_id", "sample_id", "position", "layer", "ids", "keep", "weights")}
    for s in samples:
        n, l, k = s.ids.shape
        cols["task_id"].append(np.full(n * l, s.task_id, dtype=object))
        cols["sample_id"].append(np.full(n * l, s.sample_id, dtype=np.int32))
        cols["position"].append(np.repeat(np.arange(n, dtype=np.int32), l))
        cols["layer"].append(np.tile(np.asarray(s.layers, dtype=np.int16), n))
        cols["ids"].append(s.ids.reshape(n * l, k).astype(np.int16))
        cols["keep"].append(pack_keep(s.keep.reshape(n * l, k)))
        cols["weights"].append(s.weights.reshape(n * l, k).astype(np.float32))
    if not samples:
        return TRACE_SCHEMA.empty_table()
    k = {s.ids.shape[2] for s in samples}
    if len(k) != 1:
        raise ValueError(f"samples disagree on K: {sorted(k)}")
    ids = np.concatenate(cols["ids"])  # [R,K]
    r, k = ids.shape
    offsets = pa.array(np.arange(0, r * k + 1, k, dtype=np.int32))
    expert_ids = pa.ListArray.from_arrays(offsets, pa.array(ids.reshape(-1)))
    weights = pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(cols["weights"]).reshape(-1)))
    return pa.table(
        {
            "task_id": pa.array(np.concatenate(cols["task_id"]), pa.string()),
            "sample_id": np.concatenate(cols["sample_id"]),
            "position": np.concatenate(cols["position"]),
            "layer": np.concatenate(cols["layer"]),
            "expert_ids": expert_ids,
            "keep": np.concatenate(cols["keep"]),
            "weights": weights,
        }
    ).cast(TRACE_SCHEMA)


def write_trace(path, samples: list[SampleTrace]) -> pa.Table:
    """Write `samples` as one TRACE_SCHEMA Parquet file (atomically)."""
    return write_table(path, trace_table(samples), TRACE_SCHEMA)


def assemble_steps(calls: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]], layouts: list[np.ndarray],
                   lengths: list[int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Cut router calls into per-sample decode steps.

    calls[c][l] = (ids [T_c,K], weights [T_c,K], keep [T_c,K]) of forward step c at MoE layer l;
    layouts[c] = [R_c, 3] int rows (sample b, row in call c, decode step j) saying which
    rows of step c are decode steps, and of whom; lengths[b] = generated tokens of
    sample b (steps at or past it, e.g. padding after EOS, are dropped). A step seen
    twice (recomputed after preemption) keeps its last record.
    Returns per sample (ids [N_b, L, K], weights [N_b, L, K], keep [N_b, L, K]).
    """
    n_layers = len(calls[0]) if calls else 0
    k = calls[0][0][0].shape[1] if calls else 0
    offset = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [B+1] first global step of b
    ids = np.full((offset[-1], n_layers, k), -1, np.int64)  # [S,L,K], S = all samples' steps
    keep = np.zeros((offset[-1], n_layers, k), bool)
    weights = np.zeros((offset[-1], n_layers, k), np.float32)
    seen = np.zeros(offset[-1], bool)
    lengths_np = np.asarray(lengths, dtype=np.int64)
    for step_calls, layout in zip(calls, layouts):
        b, row, j = np.asarray(layout, dtype=np.int64).reshape(-1, 3).T  # [R] each
        live = j < lengths_np[b]
        g, row = offset[b[live]] + j[live], row[live]
        ids[g] = np.stack([c_ids[row] for c_ids, _, _ in step_calls], axis=1)  # [R,L,K]
        weights[g] = np.stack([c_w[row] for _, c_w, _ in step_calls], axis=1)
        keep[g] = np.stack([c_keep[row] for _, _, c_keep in step_calls], axis=1)
        seen[g] = True
    if not seen.all():
        missing = sorted({int(np.searchsorted(offset, g, side="right") - 1) for g in np.flatnonzero(~seen)})
        raise ValueError(f"samples {missing}: some decode steps were not recorded")
    return [tuple(a[offset[i] : offset[i + 1]] for a in (ids, weights, keep)) for i in range(len(lengths))]


def write_batch_traces(task_ids: list[str], files: list, path) -> pa.Table:
    """Concatenate batch trace files (TRACE_SCHEMA), keep the rows of `task_ids`, order them by
    task (as listed), sample, position and layer, and write them to `path`."""
    table = pa.concat_tables([read_table(f, TRACE_SCHEMA) for f in sorted(set(map(str, files)))])
    wanted = pa.array(task_ids)
    table = table.filter(pc.is_in(table["task_id"], wanted))
    keys = pa.table({"o": pc.index_in(table["task_id"], wanted), "s": table["sample_id"], "p": table["position"],
                     "l": table["layer"]})
    table = table.take(pc.sort_indices(keys, [(k, "ascending") for k in ("o", "s", "p", "l")]))
    return write_table(path, table, TRACE_SCHEMA)
