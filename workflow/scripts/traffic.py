"""Traffic entry point: experts per token and distinct experts per decode step, per variant."""

from pathlib import Path

from skipbench.jobs import start_job
from skipbench.speed.specs import ModelShape
from skipbench.skip.strategies import SkipRule
from skipbench.speed.traffic import write_traffic


# Worker processes started with spawn (vLLM) re-import this module: act only as main.
if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    shape = ModelShape.from_config(Path(snakemake.input.model))
    write_traffic(
        trace_paths=dict(zip(snakemake.params.variants, snakemake.input.traces)),
        concurrency=snakemake.params.concurrency,
        bytes_per_expert=shape.expert_bytes(snakemake.params.weight_dtype or shape.weight_dtype),
        out_path=snakemake.output[0],
        rules={v: SkipRule.from_config(cfg) for v, cfg in snakemake.params.rules.items()},
    )
