"""Replay entry point: every variant's routing timed on this machine's skip paths."""

from pathlib import Path

from skipbench.jobs import start_job
from skipbench.speed.replay import ExpertShape
from skipbench.speed.replay_fit import run_replay
from skipbench.speed.specs import ModelShape
from skipbench.skip.strategies import SkipRule

if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    cfg, model = snakemake.params.replay, ModelShape.from_config(Path(snakemake.input.model))
    run_replay(
        trace_paths=dict(zip(snakemake.params.variants, snakemake.input.traces)),
        rules={v: SkipRule.from_config(c) for v, c in snakemake.params.rules.items()},
        experts=model.n_experts,
        concurrency=snakemake.params.concurrency,
        shape=ExpertShape.of_config(cfg, model),
        fit_path=snakemake.input.fit,
        out_path=snakemake.output[0],
        steps=cfg["steps"],
        repeats=cfg["repeats"],
        budget_s=cfg["budget_s"],
        threads=cfg["threads"],
        max_weight_mib=cfg["max_weight_mib"],
    )
