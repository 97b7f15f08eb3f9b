"""Expert traffic from routing traces: experts per token, skip rates, distinct experts per step.

Decode is memory-bound: what a step costs is the bytes of the DISTINCT experts the whole
batch touches in a layer, not the experts per token (DESIGN.md section 5). A trace holds
one row per (sample, generated token, MoE layer) with the router's K chosen experts and a
bitmask of the slots actually computed; this module replays the trace as if the samples
had been served together at concurrency c and counts, per decode step and layer, the
union of kept experts.

Batching model (stated, since it decides the numbers): continuous batching at a constant
load. c slots each decode one sequence; when a sequence finishes, its slot takes the next
traced sample that no slot is decoding (order of first appearance, cycling through the
samples again once all were used), so EVERY counted step holds exactly c tokens (c_effective,
below), whatever the variant's output lengths, and never one sequence twice: two slots on one sequence
would decode the same tokens in lockstep and count its experts once for two tokens. A
trace of n sequences therefore fills at most n slots: above that the replay runs at
c_effective = n and the table says so (`distinct_sequences`, `c_effective`); draw more
tasks or samples to measure a larger batch. The replay runs ceil(decode tokens /
c_effective) steps, about one pass over the trace. Only decode
tokens count: position 0 of a trace is the prompt's last token, computed in the prefill,
and is reported apart (`prefill_experts_per_token`). Equal load per step is what makes a
ratio of tokens/s between variants a speedup. Shapes: N trace rows, K router slots, E experts.

A batch_aware (OEA) mask depends on the batch it ran in, so the recorded one is only right
at the batch the variant generated at: the replay recomputes it for every replayed batch
(one step at one layer) from the traced ids and weights, with the strategy's own rule
(strategies.keep_batch_aware). At c = 1 that is exactly top-k0. Every other strategy's
mask is per token and is replayed as recorded.
"""

from __future__ import annotations

import heapq
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from skipbench.infer.traces import TRACE_SCHEMA
from skipbench.skip.strategies import SkipRule, keep_batch_aware

log = logging.getLogger(__name__)

ALL_LAYERS = -1  # `layer` value of the rows averaged over every MoE layer

# One row per (variant, concurrency, layer). Rows with layer = ALL_LAYERS average the
# per-layer quantities over the MoE layers (per step, then over steps).
TRAFFIC_SCHEMA = pa.schema(
    [
        ("variant", pa.string()),  # skip variant name from config
        ("concurrency", pa.int32()),  # c: samples decoded together
        ("layer", pa.int16()),  # MoE layer index, or ALL_LAYERS (-1)
        ("slots", pa.int16()),  # K: router slots per token (top-k of the dense model)
        ("steps", pa.int64()),  # decode steps counted: (batch, position) pairs
        ("distinct_sequences", pa.int32()),  # traced samples with decode tokens: the most slots a step can fill
        ("c_effective", pa.int32()),  # slots filled: min(concurrency, distinct_sequences); < concurrency: batch not reached
        ("tokens_per_step", pa.float64()),  # sequences active in a step: c_effective (constant load, refill)
        ("experts_per_token", pa.float64()),  # mean kept slots per decode token (dense: K)
        ("skip_rate", pa.float64()),  # 1 - experts_per_token / K
        ("slots_per_step", pa.float64()),  # mean kept (token, slot) pairs per step: drives FLOPs
        ("distinct_mean", pa.float64()),  # distinct experts loaded per step: mean over steps
        ("distinct_p50", pa.float64()),  # ... median (linear interpolation)
        ("distinct_p90", pa.float64()),  # ... 90th percentile
        ("bytes_per_expert", pa.int64()),  # weight bytes of one routed expert (dtype + scales)
        ("bytes_per_step", pa.float64()),  # distinct_mean * bytes_per_expert: expert weights read per step
        ("decode_tokens", pa.int64()),  # decode tokens in the trace (position >= 1), over all samples
        ("prefill_experts_per_token", pa.float64()),  # kept slots of each prompt's last token (position 0)
        # [K+1] share of decode tokens that kept 0, 1, ..., K routed experts: the distribution of k
        # (entropy_k, threshold, top_p_within_k, modes vary it per token); layer -1: pooled over layers
        ("kept_histogram", pa.list_(pa.float64())),
    ]
)


def trace_arrays(trace: pa.Table | pd.DataFrame) -> dict[str, np.ndarray]:
    """Columns of a trace as numpy: sample [N] (order of first appearance), position [N],
    layer [N], ids [N, K] int64, kept [N, K] bool, weights [N, K] float32."""
    if isinstance(trace, pd.DataFrame):
        trace = pa.Table.from_pandas(trace, preserve_index=False)
    trace = trace.select(TRACE_SCHEMA.names).cast(TRACE_SCHEMA)
    n = trace.num_rows
    lengths = trace["expert_ids"].combine_chunks().value_lengths().to_numpy(zero_copy_only=False)
    k = int(lengths[0]) if n else 0
    if n and (lengths != k).any():
        raise ValueError(f"expert_ids must all have the same length K, got {sorted(set(lengths.tolist()))}")
    if k > 32:
        raise ValueError(f"keep is a uint32 bitmask: at most 32 slots, got K={k}")
    ids = trace["expert_ids"].combine_chunks().flatten().to_numpy().astype(np.int64).reshape(n, k)
    weights = trace["weights"].combine_chunks()
    if n and (weights.value_lengths().to_numpy(zero_copy_only=False) != k).any():
        raise ValueError("weights must have K entries per row, as expert_ids")
    weights = weights.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, k)
    keep = trace["keep"].to_numpy().astype(np.uint64)
    kept = ((keep[:, None] >> np.arange(k, dtype=np.uint64)) & 1).astype(bool)  # N, K
    # samples keyed by (task_id, sample_id), numbered in order of first appearance
    key = pd.MultiIndex.from_arrays([trace["task_id"].to_numpy(zero_copy_only=False), trace["sample_id"].to_numpy()])
    sample, _ = pd.factorize(key)
    return dict(
        sample=sample.astype(np.int64),
        position=trace["position"].to_numpy().astype(np.int64),
        layer=trace["layer"].to_numpy().astype(np.int64),
        ids=ids,
        kept=kept,
        weights=weights,
    )


def refill_schedule(lengths: np.ndarray, concurrency: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Continuous batching of samples with `lengths` decode tokens on c_effective =
    min(concurrency, samples with decode tokens) slots.

    The earliest-free slot (lowest index on ties) takes the next sample in cyclic order
    that no slot is decoding, until every slot is busy up to the last step. With at most
    as many slots as samples one is always free: the c_effective - 1 other slots hold at
    most c_effective - 1 of them. Returns (sample [A], first step [A]) of each admission
    and the number of steps S.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    order = np.flatnonzero(lengths > 0)
    if not len(order):
        raise ValueError("no decode tokens: every traced sample generated a single token")
    slots = min(concurrency, len(order))
    n_steps = -(-int(lengths.sum()) // slots)  # ceil: one pass over the decode tokens
    free_at = [(0, slot) for slot in range(slots)]  # heap of (first free step, slot)
    busy_until = np.zeros(len(lengths), np.int64)  # per sample: step its running copy ends
    samples, starts, q = [], [], 0
    while free_at[0][0] < n_steps:
        t, slot = heapq.heappop(free_at)
        while busy_until[order[q % len(order)]] > t:  # decoding in another slot: next one
            q += 1
        s = int(order[q % len(order)])
        samples.append(s)
        starts.append(t)
        busy_until[s] = t + int(lengths[s])
        heapq.heappush(free_at, (t + int(lengths[s]), slot))
        q += 1
    return np.asarray(samples, np.int64), np.asarray(starts, np.int64), n_steps


def batch_aware_kept(k0: int, weights: np.ndarray, ids: np.ndarray, batch: np.ndarray,
                     table: int = 1 << 24) -> np.ndarray:
    """OEA masks [M,K] of M replayed rows, each row in replayed batch `batch` [M] (one step at
    one layer): strategies.keep_batch_aware over many batches per call, with expert ids keyed
    by batch (batch * E + id) so that a token only piggybacks on its own batch's experts.
    Batches go in groups whose loaded-expert table stays under `table` entries (memory)."""
    n_exp = int(ids.max()) + 1 if ids.size else 1
    per = max(1, table // n_exp)  # batches per call
    order = np.argsort(batch, kind="stable")  # M rows grouped by batch
    bounds = np.searchsorted(batch[order], np.arange(0, int(batch.max(initial=0)) + per + 1, per))
    kept = np.zeros(ids.shape, bool)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        rows = order[lo:hi]
        if len(rows):
            b = batch[rows] - batch[rows].min()
            key = torch.from_numpy(b[:, None] * n_exp + ids[rows])  # [m,K] expert of one batch
            kept[rows] = keep_batch_aware(k0, torch.from_numpy(weights[rows]), key, (int(b.max()) + 1) * n_exp).numpy()
    return kept


def replay_rows(arrays: dict[str, np.ndarray], concurrency: int, rule: SkipRule | None = None) -> dict[str, np.ndarray]:
    """The refill replay's M trace rows: step [M] (replay step), layer [M], ids [M,K],
    kept [M,K], weights [M,K]; a batch_aware `rule` recomputes `kept` for each replayed batch
    (one step at one layer)."""
    decode = arrays["position"] >= 1  # N; position 0 ran in the prefill
    sample, dpos = arrays["sample"][decode], arrays["position"][decode] - 1  # R decode rows
    ids, kept, layer = arrays["ids"][decode], arrays["kept"][decode], arrays["layer"][decode]
    weights = arrays["weights"][decode]
    if ids.size and ids.min() < 0:
        raise ValueError("expert ids must be >= 0 (skipped slots are marked in `keep`, not by id)")
    n_samples = int(arrays["sample"].max()) + 1 if len(arrays["sample"]) else 0
    lengths = np.zeros(n_samples, np.int64)
    np.maximum.at(lengths, sample, dpos + 1)
    adm_sample, adm_start, n_steps = refill_schedule(lengths, concurrency)
    by_sample = np.argsort(sample, kind="stable")  # R rows grouped by sample
    bounds = np.searchsorted(sample[by_sample], np.arange(n_samples + 1))
    rows = [by_sample[bounds[s] : bounds[s + 1]] for s in adm_sample]  # A admissions x their rows
    row = np.concatenate(rows)
    step = np.repeat(adm_start, [len(r) for r in rows]) + dpos[row]
    row, step = row[step < n_steps], step[step < n_steps]
    out = dict(step=step, layer=layer[row], ids=ids[row], kept=kept[row], weights=weights[row])  # M rows
    if rule is not None and rule.strategy == "batch_aware":
        _, batch = np.unique(step * (int(out["layer"].max(initial=0)) + 1) + out["layer"], return_inverse=True)
        out["kept"] = batch_aware_kept(rule.k0, out["weights"], out["ids"], batch)
    return out


def step_traffic(arrays: dict[str, np.ndarray], concurrency: int, rule: SkipRule | None = None) -> pd.DataFrame:
    """One row per (step, layer) of the refill replay: tokens, kept slots, distinct kept experts.
    A batch_aware `rule` recomputes the kept slots for each replayed batch."""
    rows = replay_rows(arrays, concurrency, rule)
    ids, kept = rows["ids"], rows["kept"]  # M replayed rows
    layers, layer_idx = np.unique(rows["layer"], return_inverse=True)  # L
    n_exp = int(ids.max()) + 1 if ids.size else 1
    # a single int64 key per step, and per (step, expert): union sizes by unique + bincount
    step_key = rows["step"] * len(layers) + layer_idx  # M
    steps, step_of_row = np.unique(step_key, return_inverse=True)  # S
    pairs = np.unique((step_of_row[:, None] * n_exp + ids)[kept])  # distinct (step, expert)
    distinct = np.bincount(pairs // n_exp, minlength=len(steps))  # S
    tokens = np.bincount(step_of_row, minlength=len(steps))  # S
    slots = np.bincount(step_of_row, weights=kept.sum(axis=1), minlength=len(steps))  # S
    k = kept.shape[1]
    hist = np.bincount(step_of_row * (k + 1) + kept.sum(axis=1), minlength=len(steps) * (k + 1)).reshape(-1, k + 1)
    return pd.DataFrame(
        dict(
            step=steps // len(layers),  # replay step, shared by the layers of a step
            layer=layers[steps % len(layers)],
            tokens=tokens,
            slots=slots,
            distinct=distinct,
            **{f"kept_{j}": hist[:, j] for j in range(k + 1)},  # S tokens of the step that kept j slots
        )
    )


def _summarise(steps: pd.DataFrame, by: str) -> pd.DataFrame:
    g = steps.groupby(by, sort=True)
    out = pd.DataFrame(
        dict(
            steps=g.size(),
            tokens_per_step=g["tokens"].mean(),
            slots_per_step=g["slots"].mean(),
            distinct_mean=g["distinct"].mean(),
            distinct_p50=g["distinct"].quantile(0.5),
            distinct_p90=g["distinct"].quantile(0.9),
        )
    )
    out["experts_per_token"] = g["slots"].sum() / g["tokens"].sum()
    counts = g[[c for c in steps if c.startswith("kept_")]].sum().to_numpy(dtype=float)  # [groups, K+1]
    out["kept_histogram"] = list(counts / counts.sum(axis=1, keepdims=True))
    return out.reset_index()


def traffic_table(
    trace: pa.Table | pd.DataFrame,
    variant: str,
    concurrency: list[int],
    bytes_per_expert: int,
    rule: SkipRule | None = None,
) -> pd.DataFrame:
    """TRAFFIC_SCHEMA rows for one variant's trace at each concurrency level; `rule`, the
    variant's skip rule, decides whether its masks are recomputed per replayed batch."""
    if len(trace) == 0:
        raise ValueError(f"routing trace of variant {variant!r} is empty")
    arrays = trace_arrays(trace)
    k = arrays["ids"].shape[1]
    decode = arrays["position"] >= 1
    n_sequences = len(np.unique(arrays["sample"][decode]))
    frames = []
    for c in concurrency:
        steps = step_traffic(arrays, c, rule)
        if c > n_sequences:
            log.warning("traffic %s: the trace holds %d sequences, fewer than c=%d: replayed at c_effective=%d "
                        "(draw more tasks or samples to measure this batch)", variant, n_sequences, c, n_sequences)
        per_layer = _summarise(steps, "layer")
        # model-wide: average the layers within each step first, then summarise the steps
        whole = _summarise(
            steps.groupby("step")[["tokens", "slots", "distinct", *(c for c in steps if c.startswith("kept_"))]]
            .mean().reset_index().assign(layer=ALL_LAYERS),
            "layer",
        )
        frame = pd.concat([whole, per_layer], ignore_index=True)
        frame["concurrency"] = c
        frames.append(frame)
        log.info("traffic %s c=%d: %.2f distinct experts/step/layer", variant, c, whole["distinct_mean"].iloc[0])
    out = pd.concat(frames, ignore_index=True)
    out["variant"] = variant
    out["slots"] = k
    out["skip_rate"] = 1.0 - out["experts_per_token"] / k
    out["bytes_per_expert"] = int(bytes_per_expert)
    out["bytes_per_step"] = out["distinct_mean"] * bytes_per_expert
    out["distinct_sequences"] = n_sequences
    out["c_effective"] = np.minimum(out["concurrency"], n_sequences)
    out["decode_tokens"] = int(len(np.unique(arrays["sample"][decode] * (arrays["position"].max() + 1)
                                             + arrays["position"][decode])))
    prefill = arrays["kept"][~decode]
    out["prefill_experts_per_token"] = prefill.sum(axis=1).mean() if len(prefill) else np.nan
    return out[TRAFFIC_SCHEMA.names]


def write_traffic(
    trace_paths: dict[str, str],
    concurrency: list[int],
    bytes_per_expert: int,
    out_path: str,
    rules: dict[str, SkipRule] | None = None,
) -> pa.Table:
    """Read each variant's trace Parquet ({variant: path}) and write one TRAFFIC_SCHEMA table;
    `rules` ({variant: SkipRule}) says which variants are batch_aware."""
    import pyarrow.parquet as pq

    from skipbench.io import write_table

    frames = [
        traffic_table(pq.read_table(path), variant, concurrency, bytes_per_expert, (rules or {}).get(variant))
        for variant, path in trace_paths.items()
    ]
    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), schema=TRAFFIC_SCHEMA, preserve_index=False)
    return write_table(out_path, table, TRAFFIC_SCHEMA)
