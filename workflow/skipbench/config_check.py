"""Config mistakes caught before any compute (the Snakefile calls these while planning).

Every message names the field, the value and what is allowed. Strategy parameters are checked
against the model's routing shape: from the config for the synthetic model (planning time),
from the downloaded config.json before an engine starts (skipbench.infer).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from skipbench.benchmarks import DatasetUnavailable
from skipbench.config_where import ConfigError, key_lines  # noqa: F401  (ConfigError: re-exported)


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

    @classmethod
    def of(cls, config: dict) -> "RoutingShape":
        """From a config.json of any supported family (skipbench.adapters)."""
        from skipbench.adapters import routing_of

        r = routing_of(config)
        return cls(r.experts, r.top_k, r.n_group, r.topk_group, tuple(r.moe_layers))


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


# Strategy name -> its checks against the routing shape. A new strategy adds one entry.
STRATEGY_CHECKS: dict[str, Callable[[dict, RoutingShape], list[str]]] = {
    "topk": lambda v, s: _at_most("k", v.get("k"), s.top_k, "the model's num_experts_per_tok"),
    "group": lambda v, s: _at_most("topk_group", v.get("topk_group"), s.groups, "the model's n_group"),
    "layers": _check_layers,
    "batch_aware": lambda v, s: _at_most("k0", v.get("k0"), s.top_k, "the model's num_experts_per_tok"),
    # the hooks carry the model's K slots per token: a re-run router keeps at most K
    "router_topk": lambda v, s: _at_most("k", v.get("k"), s.top_k, "the model's num_experts_per_tok"),
    "entropy_k": lambda v, s: (  # k = 1 + cut points reached: at most K
        [f"thresholds = {v['thresholds']!r}: at most {s.top_k - 1} cut points (k = 1 + cut points reached, "
         f"at most the model's num_experts_per_tok {s.top_k})"] if len(v.get("thresholds") or []) >= s.top_k else []),
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
    from skipbench.benchmarks import DATASETS

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

    from skipbench import livecodebench as lcb

    revision = bench.get("revision", "main")
    return all(isinstance(try_to_load_from_cache(lcb.HUB_REPO, f, revision=revision, repo_type="dataset"), str)
               for f in lcb.hub_files(str(bench.get("release", "release_v6"))))  # fmt: skip


def check_benchmarks(benchmarks: dict[str, dict]) -> dict[str, set[str] | None]:
    """Load every benchmark's tasks (dataset, path, pinned hash, task ids); returns task ids
    per benchmark (None: the dataset is not downloaded yet, checked when it is)."""
    from skipbench.benchmarks import load_tasks

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
    from skipbench.calibrate import DEFAULT_CALIBRATION

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
    from skipbench.benchmarks import load_tasks
    from skipbench.calibrate import calibration_tasks

    if isinstance(cfg["tasks"], list):
        pool = {t.task_id for t in load_tasks({k: v for k, v in cfg.items() if k != "tasks"})}
        if unknown := [t for t in cfg["tasks"] if t not in pool]:
            raise ConfigError(f"calibration.tasks = {cfg['tasks']!r}: {unknown} are not tasks of {cfg['dataset']}")
    try:
        calibration_tasks(calibration, benchmarks)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"calibration (dataset {cfg['dataset']!r}, tasks {cfg['tasks']!r}): {e}") from None


def check_samples_file(path: str | Path, task_ids: set[str] | None, where: str) -> None:
    """External samples: one JSON object per line with a known task_id (any string while
    the dataset is not downloaded: task_ids None) and a string `solution` or `completion`.
    Raises with file:line of every bad line (up to 10)."""
    errors = []
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}.samples = {str(path)!r}: cannot read it ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            s = json.loads(line)
        except (ValueError, RecursionError) as e:
            errors.append(f"{path}:{n}: not JSON ({e})")
            continue
        if not isinstance(s, dict):
            errors.append(f"{path}:{n}: a {type(s).__name__}, not an object")
        elif not isinstance(s.get("task_id"), str) or (task_ids is not None and s["task_id"] not in task_ids):
            errors.append(f"{path}:{n}: task_id {s.get('task_id')!r} is not a task of this benchmark")
        elif not any(isinstance(s.get(k), str) for k in ("solution", "completion")):
            got = {k: type(s[k]).__name__ for k in ("solution", "completion") if k in s}
            errors.append(f"{path}:{n}: needs a string 'solution' or 'completion', got {got or 'neither'}")
    if errors:
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise ConfigError(f"{where}.samples: bad lines:\n  " + "\n  ".join(errors[:10]) + more)
