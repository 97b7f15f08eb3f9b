# Stage 1: the model checkpoint, synthetic (tiny DeepSeek-V3, release layout) or downloaded.


rule checkpoint:
    input:
    output:
        checkpoint=directory(f"{RUN}/model/checkpoint"),
        manifest=report(
            f"{RUN}/model/checkpoint_manifest.parquet",
            caption="../report/checkpoint.rst",
            category="1. Model",
        ),
        training=f"{RUN}/model/training.parquet",
    params:
        code=code("checkpoint"),
        # `convert` is the next stage's business: changing it keeps the checkpoint.
        model={k: v for k, v in MODEL.items() if k != "convert"},
        tasks=memorised_tasks(),
    log:
        f"{RUN}/logs/checkpoint.log",
    benchmark:
        f"{RUN}/benchmarks/checkpoint.tsv",
    threads: 1  # training is pinned to one thread: a bit-identical checkpoint (tinymodel.deterministic)
    resources:
        mem_mb=4000,
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/checkpoint.py"
