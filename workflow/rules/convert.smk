# Stage 2: FP8 (128x128 block scales) <-> BF16, shard by shard.


rule fp8_convert:
    input:
        checkpoint=f"{RUN}/model/checkpoint",
    output:
        converted=directory(f"{RUN}/model/converted"),
        report=report(
            f"{RUN}/model/convert_report.parquet",
            caption="../report/convert.rst",
            category="1. Model",
        ),
    params:
        code=code("fp8_convert"),
        direction=MODEL.get("convert", "none"),
    log:
        f"{RUN}/logs/fp8_convert.log",
    benchmark:
        f"{RUN}/benchmarks/fp8_convert.tsv",
    threads: workflow.cores
    resources:
        mem_mb=8000,
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/fp8_convert.py"
