# Engine throughput of the variants at a sweep of concurrency levels (measured, never
# predicted). One job measures them all: with an eager engine in ONE engine, round by round
# alternating between variants, so machine drift hits each alike (skipbench/speed/throughput.py);
# otherwise one engine per variant, one after the other.

THROUGHPUT = config["throughput"]
THROUGHPUT_VARIANTS = THROUGHPUT.get("variants", list(VARIANTS) if GENERATES else [])  # names checked: common.smk
# Prompts are drawn from the first benchmark the workflow generates for.
THROUGHPUT_BENCHMARK = next((b for b in BENCHMARKS if generated_variants(b)), next(iter(BENCHMARKS)))


rule throughput:
    input:
        unpack(lambda wc: calibration_of(THROUGHPUT_VARIANTS)),
        model=engine_model_dir,
        kernels=f"{RUN}/kernels/manifest.parquet",
    output:  # one file per variant, in THROUGHPUT_VARIANTS order
        [
            report(
                f"{RUN}/throughput/{v}.parquet",
                caption="../report/throughput.rst",
                category="5. Throughput",
                subcategory="measured",
            )
            for v in THROUGHPUT_VARIANTS
        ],
    params:
        code=code("throughput"),
        variants={v: VARIANTS[v] for v in THROUGHPUT_VARIANTS},
        engine=config["engine"],
        benchmark=tasks_of(THROUGHPUT_BENCHMARK),
        sweep=THROUGHPUT,
        seed=config["generation"]["seed"],
        prompt=config["generation"]["prompt"],
        cache=f"{RUN}/.cache/throughput",
    log:
        f"{RUN}/logs/throughput.log",
    benchmark:
        f"{RUN}/benchmarks/throughput.tsv",
    threads: workflow.cores
    resources:
        gpu=config["engine"]["gpus"],
        mem_mb=8000,
    conda:
        "../../envs/vllm-gpu.yaml" if config["engine"]["gpus"] else "../../envs/vllm-cpu.yaml"
    script:
        "../scripts/throughput.py"
