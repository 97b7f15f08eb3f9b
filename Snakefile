# skipbench: throughput vs code-synthesis quality of expert skipping in MoE models.
# Stages: checkpoint -> fp8_convert -> build_kernels -> infer -> execute -> score -> figures.
import os
from pathlib import Path

import yaml
from snakemake.utils import min_version, validate

from skipbench.config_types import type_config
from skipbench.config_where import ConfigSource, check_schema, key_lines

min_version("9.0")

# Snakemake's own message for a YAML syntax error names neither file nor line: read it first.
if os.path.exists("config/config.yaml"):
    key_lines("config/config.yaml")


configfile: "config/config.yaml"


# Every planning error names the config file, line and key (skipbench.config_where).
# Merge order: the Snakefile's configfile, then --configfile files (they win).
CONFIG_SOURCE = ConfigSource([f for f in workflow.configfiles if f not in workflow.overwrite_configfiles]
                             + list(workflow.overwrite_configfiles))  # fmt: skip
SCHEMA = f"{workflow.basedir}/workflow/schemas/config.schema.yaml"
# --config values arrive as strings (YAML BaseLoader): type them by the schema first.
type_config(config, SCHEMA)
check_schema(config, yaml.safe_load(Path(SCHEMA).read_text()), CONFIG_SOURCE)
validate(config, SCHEMA)  # fills in the schema's defaults


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/checkpoint.smk"
include: "workflow/rules/convert.smk"
include: "workflow/rules/kernels.smk"
include: "workflow/rules/calibrate.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/execute.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/fidelity.smk"
include: "workflow/rules/evalplus.smk"
include: "workflow/rules/throughput.smk"
include: "workflow/rules/roofline.smk"
include: "workflow/rules/replay.smk"
include: "workflow/rules/report_common.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/views.smk"


onsuccess:
    sidecars.save(RUN)


onerror:
    sidecars.save(RUN)


rule all:
    input:
        scores=f"{RUN}/score/scores.parquet",
        evalplus=EVALPLUS_RESULTS,
        views=table_views(),
        figures=FIGURES,
        throughput=expand(f"{RUN}/throughput/{{variant}}.parquet", variant=THROUGHPUT_VARIANTS),
        # every job's outputs, intermediates included: a deleted infer/<b>/<v>/ is rebuilt
        # (Snakemake rebuilds a missing file only when a job to run, here `all`, needs it)
        intermediates=INTERMEDIATES,
        replay=[f"{RUN}/replay/{b}.parquet" for b in REPLAY_BENCHMARKS],
    default_target: True
