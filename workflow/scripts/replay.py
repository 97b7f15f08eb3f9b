"""Replay entry point: every variant's routing timed on this machine's skip paths."""

from pathlib import Path

from skipbench.logs import log_to
from skipbench.speed.replay import ExpertShape
from skipbench.speed.replay_fit import run_replay
from skipbench.speed.specs import ModelShape
from skipbench.skip.strategies import SkipRule

if __name__ == "__main__":
    log_to(snakemake.log[0])
    cfg, model = snakemake.params.replay, ModelShape.from_config(Path(snakemake.input.model))
    run_replay(
        trace_paths=dict(zip(snakemake.params.variants, snakemake.input.traces)),
        rules={v: SkipRule.from_config(c) for v, c in snakemake.params.rules.items()},
        experts=model.n_experts,
        concurrency=snakemake.params.concurrency,
        shape=ExpertShape.parse(cfg["expert_shape"], model.hidden, model.moe_inter, cfg["dtype"]),
        fit_path=snakemake.input.fit,
        out_path=snakemake.output[0],
        steps=cfg["steps"],
        repeats=cfg["repeats"],
        budget_s=cfg["budget_s"],
        threads=cfg["threads"],
        max_weight_mib=cfg["max_weight_mib"],
    )
