"""Config mistakes caught before any compute (the Snakefile calls these while planning).

Every message names the field, the value and what is allowed. Strategy parameters are checked
against the model's routing shape: from the config for the synthetic model (planning time),
from the downloaded config.json before an engine starts (skipbench.infer.stage).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from skipbench.benchmarks.samples import check_samples, listing
from skipbench.benchmarks.tasks import DatasetUnavailable
from skipbench.config_where import ConfigError, key_lines  # noqa: F401  (ConfigError: re-exported)
from skipbench.io import JsonlError


def check_unique_keys(paths: Iterable[str | Path]) -> None:
    """Reject a config file that is not YAML or in which a mapping repeats a key (e.g. two
    variants of one name), with file and line (config_where.key_lines)."""
    for path in paths:
        key_lines(path)


# --- strategy parameters against the model's routing shape -----------------------------


@dataclass(frozen=True)
class RoutingShape:
    experts: int  # routed experts per MoE layer
    top_k: int  # slots per token
    groups: int  # expert groups (n_group; 1: none)
    topk_group: int  # groups kept per token
    moe_layers: tuple[int, ...]  # layer indices with routed experts
    scoring: str  # "sigmoid" (DeepSeek-V3) or "softmax" (Mixtral, Qwen-MoE, OLMoE, DeepSeek-V2)

    @classmethod
    def of(cls, config: dict) -> "RoutingShape":
        """From a config.json of any supported family (skipbench.model.adapters)."""
        from skipbench.model.adapters import routing_of

        r = routing_of(config)
        return cls(r.experts, r.top_k, r.n_group, r.topk_group, tuple(r.moe_layers), r.scoring)


def synthetic_shape(architecture: dict) -> RoutingShape:
    """The routing of model.synthetic.architecture; only a config that generates needs one."""
    try:
        return RoutingShape.of({"model_type": "deepseek_v3", **architecture})
    except KeyError as e:
        raise ConfigError(f"model.synthetic.architecture: {e.args[0]} is missing (the synthetic model generates "
                          "for some benchmark)") from None


def _at_most(field: str, value, limit: int, what: str) -> list[str]:
    if value is not None and not isinstance(value, str) and value > limit:
        return [f"{field} = {value!r}: at most {limit} ({what})"]
    return []


def _check_layers(v: dict, s: RoutingShape) -> list[str]:
    moe = s.moe_layers
    bad = [layer for layer in v.get("layers") or [] if layer not in moe]
    contiguous = moe == tuple(range(moe[0], moe[-1] + 1)) if moe else False
    allowed = f"{moe[0]}..{moe[-1]}" if contiguous else list(moe)
    errors = [f"layers = {v['layers']!r}: {bad} are not MoE layers; allowed {allowed}"] if bad else []
    return errors + _at_most("cheapest", v.get("cheapest"), len(moe), "the model's MoE layers")


def _check_top_p(v: dict, s: RoutingShape) -> list[str]:
    """Huang et al.'s top-p is a rule over the softmax of ALL E experts, not capped at K
    (ZhenweiAn/Dynamic_MoE, modeling/modeling_moe.py: top_p_sampling_batched_all_sequence
    sorts and cumsums every expert's probability; SwitchMLP.forward runs every expert it
    keeps). A sigmoid router's scores normalised over all E are nearly flat, so that set
    exceeds K for most tokens at any useful p (DeepSeek-V3-like routing: 84-100% of tokens at
    p = 0.3-0.8, issue 23); the engines' K slots would cap it into a re-route that skips nothing."""
    if s.scoring != "sigmoid":
        return []
    return [f"strategy = 'top_p': refused on a sigmoid router ({s.experts} experts, top-{s.top_k}): Huang et al.'s "
            f"rule keeps the most probable experts over ALL {s.experts} until their mass crosses p (their code, "
            "ZhenweiAn/Dynamic_MoE modeling/modeling_moe.py top_p_sampling_batched_all_sequence, applies it to a "
            f"softmax and is not capped at K); over flat sigmoid scores that set is not bounded by K = {s.top_k}, "
            "and capped at K it re-routes instead of skipping. Use the named adaptation "
            "`strategy: top_p_within_k` (p within the model's own top-K renormalised weights)"]


# Strategy name -> its checks against the routing shape. A new strategy adds one entry.
STRATEGY_CHECKS: dict[str, Callable[[dict, RoutingShape], list[str]]] = {
    "topk": lambda v, s: _at_most("k", v.get("k"), s.top_k, "the model's num_experts_per_tok"),
    "group": lambda v, s: _at_most("topk_group", v.get("topk_group"), s.groups, "the model's n_group"),
    "layers": _check_layers,
    "top_p": _check_top_p,
    "batch_aware": lambda v, s: _at_most("k0", v.get("k0"), s.top_k, "the model's num_experts_per_tok"),
    # the hooks carry the model's K slots per token: a re-run router keeps at most K
    "router_topk": lambda v, s: _at_most("k", v.get("k"), s.top_k, "the model's num_experts_per_tok"),
    "entropy_k": lambda v, s: [  # k = 1 + cut points reached: at most K
        f"{name} = {v[name]!r}: at most {s.top_k - 1} cut points (k = 1 + cut points reached, "
        f"at most the model's num_experts_per_tok {s.top_k})"
        for name in ("thresholds", "quantiles") if len(v.get(name) or []) >= s.top_k],
}


def check_variants(variants: dict[str, dict], shape: RoutingShape, where: str = "variants") -> None:
    """Every variant's parameters fit the model: raise one ConfigError listing all misfits."""
    errors = [f"{where}.{name}.{msg}" for name, v in variants.items()
              for msg in STRATEGY_CHECKS.get(v.get("strategy"), lambda v, s: [])(v, shape)]
    if errors:
        raise ConfigError("strategy parameters do not fit the model's routing:\n  " + "\n  ".join(errors))


def check_variants_against_checkpoint(variants: dict[str, dict], model_dir: Path) -> None:
    """check_variants with the shape of a checkpoint on disk (downloaded models, before an engine start)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    check_variants(variants, RoutingShape.of(cfg))


# --- benchmarks, calibration, external samples ----------------------------------------


def needs_download(bench: dict) -> bool:
    """Whether loading a dataset would fetch it (EvalPlus, no local file yet): then its
    check waits for the stage that downloads it, and planning stays offline."""
    from skipbench.benchmarks.tasks import DATASETS

    if bench.get("dataset") == "livecodebench":  # no hub call while planning: the cache only
        return not bench.get("path") and not _lcb_cached(bench)
    src = DATASETS.get(bench.get("dataset"))
    if bench.get("dataset") == "humaneval" or bench.get("path") or src is None or os.environ.get(src.env):
        return False
    from evalplus.data.utils import get_dataset_metadata

    return not os.path.exists(get_dataset_metadata(src.release, src.version, mini=False)[1])


def _lcb_cached(bench: dict) -> bool:
    """Whether every file of the benchmark's LiveCodeBench release is in the hub cache."""
    from huggingface_hub import try_to_load_from_cache

    from skipbench.benchmarks import livecodebench as lcb

    revision = bench.get("revision", "main")
    return all(isinstance(try_to_load_from_cache(lcb.HUB_REPO, f, revision=revision, repo_type="dataset"), str)
               for f in lcb.hub_files(str(bench.get("release", "release_v6"))))  # fmt: skip


def check_benchmarks(benchmarks: dict[str, dict]) -> dict[str, set[str] | None]:
    """Load every benchmark's tasks (dataset, path, pinned hash, task ids); returns task ids
    per benchmark (None: the dataset is not downloaded yet, checked when it is)."""
    from skipbench.benchmarks.tasks import load_tasks

    ids = {}
    for name, bench in benchmarks.items():
        if needs_download(bench):
            ids[name] = None
            continue
        try:
            ids[name] = {t.task_id for t in load_tasks(bench)}
        except DatasetUnavailable as e:  # offline planning: the stage that reads it fetches it (or says why not)
            _not_checked(f"benchmarks.{name}", e)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"benchmarks.{name} (dataset {bench.get('dataset')!r}, path {bench.get('path')!r}): {e}") from None
    return ids


def check_calibration(calibration: dict, benchmarks: dict[str, dict]) -> None:
    """Calibration tasks exist, are held out, and are enough (else calibrate fails after training)."""
    from skipbench.infer.calibrate import DEFAULT_CALIBRATION

    cfg = DEFAULT_CALIBRATION | dict(calibration)
    if any(needs_download(b) for b in [cfg, *benchmarks.values()]):
        return  # calibrate checks it after the download
    try:
        _check_calibration(cfg, calibration, benchmarks)
    except DatasetUnavailable as e:  # a LiveCodeBench release not here yet
        _not_checked("calibration", e)


def _not_checked(what: str, e: Exception) -> None:
    sys.stderr.write(f"skipbench: {what} not checked before the run: its dataset is not here yet ({e})\n")


def _check_calibration(cfg: dict, calibration: dict, benchmarks: dict[str, dict]) -> None:
    from skipbench.benchmarks.tasks import load_tasks
    from skipbench.infer.calibrate import calibration_tasks

    if isinstance(cfg["tasks"], list):
        pool = {t.task_id for t in load_tasks({k: v for k, v in cfg.items() if k != "tasks"})}
        if unknown := [t for t in cfg["tasks"] if t not in pool]:
            raise ConfigError(f"calibration.tasks = {cfg['tasks']!r}: {unknown} are not tasks of {cfg['dataset']}")
    try:
        calibration_tasks(calibration, benchmarks)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"calibration (dataset {cfg['dataset']!r}, tasks {cfg['tasks']!r}): {e}") from None


def check_samples_file(path: str | Path, task_ids: set[str] | None, where: str) -> None:
    """External samples, checked as the execute stage checks them (skipbench.benchmarks.samples), so a
    file that plans also runs: one JSON object per line with a known task_id (any string while
    the dataset is not downloaded: task_ids None), a string `solution` or `completion`, a
    unique sample_id. Raises with file:line of every bad line (up to 10)."""
    try:
        _, errors = check_samples(Path(path), task_ids, where)
    except JsonlError as e:
        raise ConfigError(f"{where}.samples: cannot read it: {e}") from None
    if errors:
        raise ConfigError(f"{where}.samples: {listing(errors)}")
