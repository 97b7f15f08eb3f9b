"""The infer stage's resumable cache: one folder per variant, keyed by everything that
decides its tokens, holding one checksummed JSON record per finished batch.

A variant's cache is <cache dir>/infer-<key>/, where key hashes the model files (by
content: model_fingerprint), the rule with its calibration values, the engine settings
and the generation settings (GenerationSettings). open_cache says which tasks are done
and which are still to generate; a record that fails its checksum is dropped, so its
tasks are generated again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from skipbench.benchmarks.prompts import HUMANEVAL_STOP
from skipbench.benchmarks.tasks import Task
from skipbench.io import sampled_digest, stable_hash, write_json
from skipbench.skip.strategies import SkipRule
from skipbench_kernels.integration import KernelChoice

log = logging.getLogger(__name__)

DEFAULT_BATCH = 8


def model_fingerprint(model_dir: Path) -> dict:
    """Identity of a checkpoint by content, never by mtime (a copy or `snakemake --touch` keeps
    the cache): small files whole, big ones by size and a sampled content digest. Hidden files
    are bookkeeping (Snakemake's .snakemake_timestamp, download state), not the model."""
    files = {}
    for f in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        rel = f.relative_to(model_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        size = f.stat().st_size
        files[str(rel)] = f.read_text() if size < (1 << 20) and f.suffix in (".json", ".txt", ".model") else [size, sampled_digest(f)]
    return files


def _record_sha(record: dict) -> str:
    return hashlib.sha256(json.dumps({k: v for k, v in record.items() if k != "sha256"}, sort_keys=True,
                                     default=str).encode()).hexdigest()


def save_batch(run_dir: Path, batch_key: str, record: dict) -> None:
    """Checkpoint one batch record with the checksum load_done verifies."""
    write_json(run_dir / f"batch-{batch_key}.json", record | {"sha256": _record_sha(record)})


def load_done(run_dir: Path) -> list[dict]:
    """Finished batch records in run_dir. A record that does not parse or whose checksum does
    not match (a truncated disk, an edited file) is removed with a warning: its tasks are
    generated again. Its trace goes with it."""
    done = []
    for path in sorted(run_dir.glob("batch-*.json")):
        try:
            record = json.loads(path.read_text())
            ok = isinstance(record, dict) and record.get("sha256") == _record_sha(record)
        except (OSError, ValueError) as e:
            ok, record = False, {"error": f"{type(e).__name__}: {e}"}
        if ok:
            done.append(record)
            continue
        log.warning("cache entry %s is corrupt or has no checksum (%s): removed, its tasks are generated again",
                    path, record.get("error", "checksum mismatch"))
        (run_dir / f"trace-{path.stem.removeprefix('batch-')}.parquet").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    return done


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    seed: int
    stop: list[str]
    batch_size: int
    deployment_batch: int | None = None  # report.deployment_batch: batch_aware variants generate at it

    @classmethod
    def from_config(cls, generation_cfg: dict, deployment_batch: int | None = None) -> "GenerationSettings":
        return cls(int(generation_cfg["max_new_tokens"]), int(generation_cfg.get("seed", 0)),
                   list(generation_cfg.get("stop", HUMANEVAL_STOP)), int(generation_cfg.get("batch_size", DEFAULT_BATCH)),
                   deployment_batch and int(deployment_batch))

    def for_rule(self, rule: SkipRule) -> "GenerationSettings":
        """OEA decides from the whole step: batch_aware generates at the deployment batch (1: same steps run to run)."""
        return replace(self, batch_size=self.deployment_batch) if rule.strategy == "batch_aware" and self.deployment_batch else self


@dataclass(frozen=True)
class VariantCache:
    """One variant's checkpointed batches: what is done and which tasks are still to generate."""

    variant: str
    rule: SkipRule  # calibration values bound
    run_dir: Path
    done: list[dict]  # finished batch records
    todo: list[Task]
    resumed: int  # tasks already done

    def note_generated(self, samples: int) -> None:
        """Record how many samples the generate job that just ran generated into this cache."""
        write_json(self.run_dir / "generated.json", dict(generated_samples=samples))

    def generated_by_last_job(self) -> int:
        """Samples the last generate job generated for this variant (its note; 0: none)."""
        note = self.run_dir / "generated.json"
        return json.loads(note.read_text())["generated_samples"] if note.exists() else 0


def open_cache(model_dir: Path, tasks: list[Task], variant: str, rule: SkipRule, engine_cfg: dict,
               gen: GenerationSettings, cache_dir: Path, tracing: bool, kernel: KernelChoice | None) -> VariantCache:
    key = stable_hash(dict(model=model_fingerprint(model_dir), rule=rule.to_json(), engine=engine_cfg, counts="decode",
                           max_new_tokens=gen.max_new_tokens, seed=gen.seed, stop=gen.stop,
                           batch_size=gen.for_rule(rule).batch_size, trace=tracing, kernel=kernel.backend if kernel else None))
    run_dir = Path(cache_dir) / f"infer-{key}"
    run_dir.mkdir(parents=True, exist_ok=True)
    done = load_done(run_dir)
    have = {(s["task_id"], s["prompt_sha"]) for b in done for s in b["samples"]}
    todo = [t for t in tasks if (t.task_id, stable_hash(t.prompt)) not in have]
    log.info("infer %s: %d tasks, %d from cache %s, %d to generate", variant, len(tasks), len(tasks) - len(todo),
             run_dir, len(todo))
    return VariantCache(variant, rule, run_dir, done, todo, len(tasks) - len(todo))
