"""Replay fit entry point: this machine's cost model rows, timed on dense's replayed routing."""

from pathlib import Path

from skipbench.jobs import start_job
from skipbench.speed.replay import ExpertShape
from skipbench.speed.replay_fit import run_fit
from skipbench.speed.specs import ModelShape

if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    cfg, model = snakemake.params.replay, ModelShape.from_config(Path(snakemake.input.model))
    run_fit(
        dense_trace=snakemake.input.dense,
        experts=model.n_experts,
        concurrency=snakemake.params.concurrency,
        shape=ExpertShape.of_config(cfg, model),
        out_path=snakemake.output[0],
        steps=cfg["steps"],
        repeats=cfg["repeats"],
        budget_s=cfg["fit_budget_s"],
        threads=cfg["threads"],
        max_weight_mib=cfg["max_weight_mib"],
    )
