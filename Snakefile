# skipbench: throughput vs code-synthesis quality of expert skipping in MoE models.
# Stages: checkpoint -> fp8_convert -> build_kernels -> infer -> execute -> score -> figures.
from snakemake.utils import min_version, validate

from skipbench.config_types import type_config

min_version("9.0")


configfile: "config/config.yaml"


# --config values arrive as strings (YAML BaseLoader): type them by the schema first.
type_config(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")
validate(config, "workflow/schemas/config.schema.yaml")


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


rule all:
    input:
        scores=f"{RUN}/score/scores.parquet",
        evalplus=EVALPLUS_RESULTS,
        views=table_views(),
        figures=FIGURES,
        throughput=expand(f"{RUN}/throughput/{{variant}}.parquet", variant=THROUGHPUT_VARIANTS),
        replay=[f"{RUN}/replay/{b}.parquet" for b in replay_benchmarks()],
    default_target: True
