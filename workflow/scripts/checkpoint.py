"""Stage 1 entry point: write (synthetic) or download (huggingface) the checkpoint."""

import json
from pathlib import Path

from skipbench.reproducible import pin_cpu_paths

pin_cpu_paths()  # before torch loads (via the modules below): a bit-identical checkpoint

from skipbench.model.adapters import check_routing
from skipbench.benchmarks.tasks import Task
from skipbench.model.checkpoint import run_checkpoint
from skipbench.jobs import start_job


# Worker processes started with spawn (vLLM) re-import this module: act only as main.
if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    model_cfg = snakemake.params.model
    # The memorisation demo trains on the tasks it is then evaluated on (said in the README).
    run_checkpoint(
        model_cfg=model_cfg,
        tasks=[Task(**t) for t in snakemake.params.tasks],
        out_dir=Path(snakemake.output.checkpoint),
        manifest_path=Path(snakemake.output.manifest),
        training_report_path=Path(snakemake.output.training),
    )
    # A preset states the routing it expects: a wrong revision or repo fails here, not later.
    if "expected_routing" in model_cfg:
        config_json = json.loads((Path(snakemake.output.checkpoint) / "config.json").read_text())
        check_routing(config_json, model_cfg["expected_routing"])
