# Stage 1: the model checkpoint, synthetic (tiny DeepSeek-V3, release layout) or downloaded.


rule checkpoint:
    input:
        lib("checkpoint", "tinymodel", "fp8", "layout", "adapters"),
    output:
        checkpoint=directory(f"{RUN}/model/checkpoint"),
        manifest=report(
            f"{RUN}/model/checkpoint_manifest.parquet",
            caption="../report/checkpoint.rst",
            category="1. Model",
        ),
        training=f"{RUN}/model/training.parquet",
    params:
        model=MODEL,
        benchmarks=BENCHMARKS,
    log:
        f"{RUN}/logs/checkpoint.log",
    benchmark:
        f"{RUN}/benchmarks/checkpoint.tsv",
    threads: workflow.cores
    resources:
        mem_mb=4000,
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/checkpoint.py"
