"""Roofline entry point: predicted decode time per step and its validation."""

from pathlib import Path

from skipbench.jobs import start_job
from skipbench.speed.roofline import run_roofline


# Worker processes started with spawn (vLLM) re-import this module: act only as main.
if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    cfg = snakemake.params.roofline
    run_roofline(
        model_dir=Path(snakemake.input.model),
        traffic_path=snakemake.input.traffic,
        hardware=cfg["hardware"],
        context_len=snakemake.params.context_len,
        out_path=snakemake.output.predictions,
        validation_path=snakemake.output.validation,
        n_devices=cfg["n_devices"],
        layer_overhead_ms=cfg["layer_overhead_ms"],
        weight_dtype=cfg["weight_dtype"],
        kernel_bench=cfg["kernel_bench"],
        throughput_paths=list(snakemake.input.throughput),
        machine=dict(zip(snakemake.params.measured_here, snakemake.input.machine)),
    )
