"""Stage `calibrate`: per-layer routing statistics of the dense model on held-out text.

Calibration text: prompt + canonical solution of benchmark tasks that NO configured
benchmark evaluates (default: HumanEval tasks after the evaluated ones; HumanEval and
HumanEval+ share task ids, so both are excluded). `calibration_tasks` refuses any
overlap: by task id, and by normalised or nearly equal text across every benchmark's
dataset (disjoint.py).

The dense model runs teacher-forced over each text (one text per forward, no padding)
with transformers and eager experts: the oracle with the dense rule, plus hooks that
re-run each routed expert on its tokens to measure ||E_e(x)||. Fine for the tiny model
and for DeepSeek-Coder-V2-Lite on one GPU; for DeepSeek-V3 the same code needs a
multi-GPU `device_map="auto"` load of the bf16 checkpoint (~1.3 TB), which this
machine cannot test: it is an offline, once-per-model cost.

The statistics feed the strategies that need them (bind_calibration):
threshold `beta: calibrated` (NAEE: per-layer median of w2/w1), layers `cheapest: n`
(least relative update of the residual stream by routed experts), prune (frequency or
REAP saliency = mean over routed tokens of g * ||E(x)||, g the router weight incl.
routed_scaling_factor, a per-model constant that does not change the ranking), modes
(MoDES: KL importance per layer, one extra forward per MoE layer and text), entropy_k
`quantiles` (percentiles of each layer's normalised router entropy).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from skipbench.progress import track

from skipbench.benchmarks.tasks import Task, load_tasks
from skipbench.benchmarks.disjoint import EvaluatedTexts
from skipbench.io import read_table, stable_hash, write_table
from skipbench.skip.routing import normalised_entropy, probabilities
from skipbench.skip.strategies import CALIBRATED, SkipRule

log = logging.getLogger(__name__)

# One row per MoE layer. E experts, K router slots.
CALIBRATION_SCHEMA = pa.schema([
    ("layer", pa.int16()),  # model layer index
    ("tokens", pa.int64()),  # calibration tokens routed through the layer
    ("experts", pa.int16()),  # E
    ("slots", pa.int16()),  # K
    ("frequency", pa.list_(pa.float64())),  # [E] share of tokens whose dense top-K holds expert e
    ("saliency", pa.list_(pa.float64())),  # [E] REAP: mean over tokens routed to e of g_e * ||E_e(x)|| (0 if never routed)
    ("ratio_median", pa.list_(pa.float64())),  # [K] median over tokens of w_(r) / w_(1), r = 1..K by weight rank
    ("ratio_mean", pa.list_(pa.float64())),  # [K] mean of the same
    ("routed_norm", pa.float64()),  # mean over tokens of ||sum_k g_k E_k(x)||: the routed experts' output
    ("relative_update", pa.float64()),  # mean over tokens of routed norm / norm of the residual stream it is added to
    # MoDES (ModelTC/MoDES get_layer_importance_ddp.py): KL(dense || layer's routed experts skipped) of
    # the output distribution, summed over the solution's tokens / their count, normalised to sum 1 over layers
    ("modes_importance", pa.float64()),
    ("entropy_quantiles", pa.list_(pa.float64())),  # [101] router entropy over all E / log E: percentiles 0..100
    ("source", pa.string()),  # calibration text: dataset and hash of the task ids
    ("texts", pa.int32()),  # calibration texts (prompt + canonical solution)
])

DEFAULT_CALIBRATION = {"dataset": "humaneval", "tasks": 16}


def _family(dataset: str) -> str:
    """Datasets that share task ids (HumanEval and HumanEval+); any other is its own family."""
    return {"humaneval_plus": "humaneval", "mbpp_plus": "mbpp"}.get(dataset, dataset)


def _no_duplicate_ids(ids, where: str) -> None:
    seen, dup = set(), []
    for i in ids:
        if i in seen:
            dup.append(i)
        seen.add(i)
    if dup:
        raise ValueError(f"{where} lists task ids more than once: {sorted(set(dup))}")


def calibration_tasks(calibration_cfg: dict, benchmarks_cfg: dict) -> list[Task]:
    """Calibration tasks of `calibration_cfg` ({dataset, tasks: n or [ids], path?}) that no
    benchmark in `benchmarks_cfg` evaluates. A count takes the first n tasks that are held
    out; explicit ids that are not are an error naming the task.

    Held out means: not an evaluated id of the same dataset family (HumanEval and
    HumanEval+ share ids), and neither its prompt nor its prompt + solution equal or
    nearly equal (disjoint.py: normalised text, token 3-gram Jaccard >= 0.8) those of an
    evaluated task of ANY benchmark (MBPP+ too)."""
    cfg = DEFAULT_CALIBRATION | dict(calibration_cfg)
    evaluated_ids, prompts, fulls = set(), [], []
    for name, bench in benchmarks_cfg.items():
        for t in load_tasks(bench):
            label = f"{t.task_id} (benchmark {name!r})"
            prompts.append((label, t.prompt))
            fulls.append((label, t.prompt + t.canonical_solution))
            if _family(bench["dataset"]) == _family(cfg["dataset"]):
                evaluated_ids.add(t.task_id)
    by_prompt, by_text = EvaluatedTexts(prompts), EvaluatedTexts(fulls)

    def clash(t: Task) -> str | None:
        if t.task_id in evaluated_ids:
            return "is evaluated by a benchmark"
        found = by_prompt.clash(t.prompt) or by_text.clash(t.prompt + t.canonical_solution)
        return None if found is None else f"duplicates evaluated task {found[0]} (similarity {found[1]:.2f})"

    pool = load_tasks({k: v for k, v in cfg.items() if k != "tasks"})  # the whole dataset
    _no_duplicate_ids([t.task_id for t in pool], f"calibration dataset {cfg['dataset']!r}")
    want = cfg["tasks"]
    if isinstance(want, int):
        free = []
        for t in pool:
            why = clash(t)
            if why is None:
                free.append(t)
                if len(free) == want:
                    return free
            elif t.task_id not in evaluated_ids:
                log.info("calibration skips %s: it %s", t.task_id, why)
        raise ValueError(f"calibration wants {want} tasks, only {len(free)} are held out from the benchmarks")
    _no_duplicate_ids(want, "calibration.tasks")
    by_id = {t.task_id: t for t in pool}
    out = []
    for i in want:
        if i not in by_id:
            raise ValueError(f"calibration task {i!r} is not in dataset {cfg['dataset']!r}")
        if why := clash(by_id[i]):
            raise ValueError(f"calibration task {i!r} {why}: calibration must be held out")
        out.append(by_id[i])
    return out


class _LayerStats:
    """Running sums for one MoE layer."""

    def __init__(self, n_experts: int, k: int):
        self.tokens = 0
        self.count = np.zeros(n_experts)  # [E] tokens routed to e
        self.sal = np.zeros(n_experts)  # [E] sum of g * ||E(x)||
        self.ratios: list[np.ndarray] = []  # [T,K] per text
        self.routed_norm = 0.0
        self.rel = 0.0
        self.residual: torch.Tensor | None = None  # [T] norm of the residual stream, set by the pre-hook
        self.entropy: list[np.ndarray] = []  # [T] normalised router entropy per text
        self.kl = 0.0  # MoDES: KL summed over solution tokens with this layer's routed experts skipped

    def row(self, layer: int, source: str, texts: int, kl_total: float) -> dict:
        ratios = np.concatenate(self.ratios)  # [N,K]
        n = max(self.tokens, 1)
        entropy = np.concatenate(self.entropy)
        return dict(layer=layer, tokens=self.tokens, experts=len(self.count), slots=ratios.shape[1],
                    frequency=(self.count / n).tolist(),
                    saliency=np.divide(self.sal, self.count, out=np.zeros_like(self.sal), where=self.count > 0).tolist(),
                    ratio_median=np.median(ratios, axis=0).tolist(), ratio_mean=ratios.mean(axis=0).tolist(),
                    routed_norm=self.routed_norm / n, relative_update=self.rel / n,
                    # MoDES divides by the token count, then by the sum over layers: the count cancels
                    modes_importance=self.kl / kl_total if kl_total > 0 else math.nan,
                    entropy_quantiles=np.quantile(entropy, np.linspace(0, 1, 101)).tolist(),
                    source=source, texts=texts)


@torch.no_grad()
def _observe(moe, gate, stats: _LayerStats, x: torch.Tensor) -> None:
    """Statistics of one MoE call on x [T,H] (the dense routing is in gate.last)."""
    ids, w, _ = gate.last  # [T,K] dense
    x = x.reshape(-1, x.shape[-1])
    t = x.shape[0]
    logits = gate.gate(x)[0]  # [T,E] the router's logits, as the rules see them
    stats.entropy.append(normalised_entropy(probabilities(logits, gate.layer_rule.spec)).reshape(-1).cpu().numpy())
    sorted_w = w.float().sort(-1, descending=True).values  # [T,K]
    stats.ratios.append((sorted_w / sorted_w[:, :1]).cpu().numpy())
    routed = torch.zeros_like(x, dtype=torch.float32)  # [T,H]
    for e in ids.unique().tolist():  # offline: a loop over experts is fine
        tok, slot = torch.where(ids == e)
        one = torch.full((len(tok), 1), e, dtype=ids.dtype, device=ids.device)
        out = moe.experts(x[tok], one, torch.ones(len(tok), 1, dtype=x.dtype, device=x.device)).float()  # E_e(x)
        g = w[tok, slot].float()
        stats.sal[e] += float((g * out.norm(dim=-1)).sum())
        stats.count[e] += len(tok)
        routed.index_add_(0, tok, out * g[:, None])
    norm = routed.norm(dim=-1)  # [T]
    stats.routed_norm += float(norm.sum())
    stats.rel += float((norm / stats.residual.reshape(-1).clamp_min(1e-12)).sum())
    stats.tokens += t


@torch.no_grad()
def _modes_kl(model, gates, ids: torch.Tensor, n_prompt: int, stats: dict) -> None:
    """MoDES layer importance, one text: for each MoE layer, KL(dense || the layer's routed
    experts skipped, shared expert kept) of the next-token distribution, summed over the
    solution's token positions (MoDES: the answer tokens), added to stats[layer].kl. As
    ModelTC/MoDES get_layer_importance_ddp.py (lines 104-136: a dense forward, then one per MoE
    layer with `moe_layer_skip=layer_idx`, logits at the answer tokens; `F.kl_div(log_softmax(
    skipped / T), softmax(dense / T), reduction="sum")` under relu, T = 1). Their Qwen3-VL skip
    passes the MoE input through for the skipped tokens (models/qwen3.py mlp_forward, the
    moe_layer_skip_flag branch); here the routed output is 0 and the shared expert stays, as
    the `layers` strategy does. MoDES then divides by the token count and by the sum over
    layers: the count cancels, so row() divides by the sum alone."""
    dense = model(ids).logits[0, n_prompt:].float().log_softmax(-1)  # [S,V] solution positions
    for _, gate in gates:
        rule = gate.rule
        gate.rule = SkipRule("layers", layers=(gate.layer,))
        try:
            skipped = model(ids).logits[0, n_prompt:].float().log_softmax(-1)
        finally:
            gate.rule = rule
        kl = torch.nn.functional.kl_div(skipped, dense, reduction="sum", log_target=True)
        stats[gate.layer].kl += max(float(kl), 0.0)


def run_calibration(model_dir: Path, tasks: list[Task], out_path: Path, dtype: str = "float32",
                    max_tokens: int = 1024) -> pa.Table:
    """Dense routing statistics over prompt + canonical solution of `tasks`; writes CALIBRATION_SCHEMA."""
    from transformers import AutoTokenizer

    from skipbench.infer.oracle import load_oracle

    model, gates = load_oracle(Path(model_dir), SkipRule("dense"), getattr(torch, dtype))
    tok = AutoTokenizer.from_pretrained(model_dir)
    modules = dict(model.named_modules())
    stats, handles = {}, []
    for name, gate in gates:
        # the residual stream the MoE output is added to is the input of the layer's post-attention norm
        moe, norm = modules[name], modules[name.rsplit(".", 1)[0] + ".post_attention_layernorm"]
        st = stats[gate.layer] = _LayerStats(gate.num_experts, gate.gate.top_k)

        def pre(module, args, st=st):
            st.residual = args[0].float().norm(dim=-1)

        def post(module, args, output, st=st, gate=gate):
            _observe(module, gate, st, args[0])

        handles += [norm.register_forward_pre_hook(pre), moe.register_forward_hook(post)]
    texts = [(tok(t.prompt + t.canonical_solution, return_tensors="pt")["input_ids"][:, :max_tokens],
              len(tok(t.prompt)["input_ids"])) for t in tasks]  # (ids [1,N], prompt tokens)
    try:
        for ids, _ in track(texts, desc="calibrate", unit="text"):
            model(ids)
    finally:
        for h in handles:
            h.remove()
    for ids, n_prompt in track(texts, desc="calibrate: MoDES layer importance", unit="text"):
        _modes_kl(model, gates, ids, n_prompt, stats)
    kl_total = sum(st.kl for st in stats.values())
    source = f"{tasks[0].task_id.split('/')[0] if tasks else 'none'}:{stable_hash(sorted(t.task_id for t in tasks))}"
    rows = [stats[layer].row(layer, source, len(tasks), kl_total) for layer in sorted(stats)]
    for r in rows:
        log.info("layer %d: %d tokens, median w2/w1 %.3f, relative update %.3f", r["layer"], r["tokens"],
                 r["ratio_median"][1] if len(r["ratio_median"]) > 1 else math.nan, r["relative_update"])
    return write_table(out_path, rows, CALIBRATION_SCHEMA)


def bind_calibration(rule: SkipRule, table: pa.Table | None) -> SkipRule:
    """`rule` with its calibration-derived values filled in from a CALIBRATION_SCHEMA table."""
    if not rule.needs_calibration:
        return rule
    if table is None:
        raise ValueError(f"variant {rule.to_json()} needs the calibration table")
    rows = {r["layer"]: r for r in table.to_pylist()}
    params = rule.params() | {"strategy": rule.strategy}
    if rule.beta == CALIBRATED:
        params["layer_beta"] = {layer: r["ratio_median"][1] if r["slots"] > 1 else 1.0 for layer, r in rows.items()}
    if rule.cheapest is not None:
        if rule.cheapest > len(rows):
            raise ValueError(f"cheapest {rule.cheapest} > {len(rows)} MoE layers")
        order = sorted(rows, key=lambda layer: (rows[layer]["relative_update"], layer))
        params["layers"] = sorted(order[: rule.cheapest])
    if rule.quantiles is not None:  # entropy_k: cut points at these quantiles of the layer's entropy
        grid = np.linspace(0, 1, 101)
        params["layer_thresholds"] = {layer: np.interp(rule.quantiles, grid, r["entropy_quantiles"]).tolist()
                                      for layer, r in rows.items()}
    if rule.strategy == "modes":  # MoDES: KL importance, sum 1 over the MoE layers
        if any(not r["modes_importance"] >= 0 for r in rows.values()):  # NaN: no solution token within max_tokens
            raise ValueError("modes: the calibration measured no layer importance (no solution token within the "
                             "calibration's max_tokens, or skipping changed nothing): rerun calibrate with longer texts")
        params["layer_importance"] = {layer: r["modes_importance"] for layer, r in rows.items()}
    if rule.strategy == "modulated":
        # our MoDES-like ablation's layer importance: how much the layer's routed experts change the
        # residual stream (relative_update), normalised to mean 1 over the MoE layers
        mean = sum(r["relative_update"] for r in rows.values()) / len(rows)
        params["layer_importance"] = {layer: r["relative_update"] / mean if mean > 0 else 1.0 for layer, r in rows.items()}
    if rule.strategy == "prune":
        key = "frequency" if rule.criterion == "frequency" else "saliency"
        pruned = {}
        for layer, r in rows.items():
            n = round(rule.fraction * r["experts"])
            score = np.asarray(r[key])
            pruned[layer] = sorted(np.argsort(score, kind="stable")[:n].tolist())  # lowest first, ties by id
        params["pruned"] = pruned
    return SkipRule.from_config(params)


def variant_rule(variant_cfg: dict, calibration_path: Path | None = None) -> SkipRule:
    """A variant's rule, with calibration values bound from calibration_path where its strategy needs them."""
    rule = SkipRule.from_config(variant_cfg)
    if rule.needs_calibration:
        rule = bind_calibration(rule, read_table(calibration_path) if calibration_path else None)
    return rule
