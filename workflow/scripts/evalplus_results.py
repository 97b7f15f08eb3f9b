"""Entry point: one (benchmark, variant)'s verdicts as EvalPlus's eval_results.json."""

import pyarrow.parquet as pq

from skipbench.benchmarks.tasks import load_benchmark
from skipbench.score.evalplus_results import write_eval_results
from skipbench.jobs import start_job

if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    execution = pq.read_table(snakemake.input.execution).to_pandas()
    bench = load_benchmark(snakemake.params.benchmark)
    write_eval_results(snakemake.output.results, bench, snakemake.input.samples, execution)
