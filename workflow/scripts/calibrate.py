"""Stage 3b entry point: per-layer routing statistics of the dense model on held-out text."""

from pathlib import Path

from skipbench.infer.calibrate import DEFAULT_CALIBRATION, calibration_tasks, run_calibration
from skipbench.jobs import start_job

if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    cfg = DEFAULT_CALIBRATION | snakemake.params.calibration
    run_calibration(
        model_dir=Path(snakemake.input.model),
        tasks=calibration_tasks(cfg, snakemake.params.benchmarks),
        out_path=Path(snakemake.output.calibration),
        dtype=cfg.get("dtype", "float32"),
        max_tokens=int(cfg.get("max_tokens", 1024)),
    )
