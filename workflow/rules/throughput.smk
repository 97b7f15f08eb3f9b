# Engine throughput per variant at a sweep of concurrency levels (measured, never predicted).

THROUGHPUT = config["throughput"]
THROUGHPUT_VARIANTS = THROUGHPUT.get("variants", list(VARIANTS))
# Prompts are drawn from the first benchmark the workflow generates for.
THROUGHPUT_BENCHMARK = next((b for b in BENCHMARKS if generated_variants(b)), next(iter(BENCHMARKS)))


rule throughput:
    input:
        lib("throughput", "engines", "strategies", "vllm_plugin"),
        model=engine_model_dir,
        kernels=f"{RUN}/kernels/manifest.parquet",
    output:
        report(
            f"{RUN}/throughput/{{variant}}.parquet",
            caption="../report/throughput.rst",
            category="5. Throughput",
            subcategory="measured",
        ),
    params:
        variant=lambda wc: VARIANTS[wc.variant],
        engine=config["engine"],
        benchmark=BENCHMARKS[THROUGHPUT_BENCHMARK],
        sweep=THROUGHPUT,
        seed=config["generation"]["seed"],
        cache=lambda wc: f"{RUN}/.cache/throughput/{wc.variant}",
    log:
        f"{RUN}/logs/throughput/{{variant}}.log",
    threads: workflow.cores
    resources:
        gpu=config["engine"]["gpus"],
        mem_mb=8000,
    conda:
        "../../envs/vllm-gpu.yaml" if config["engine"]["gpus"] else "../../envs/vllm-cpu.yaml"
    script:
        "../scripts/throughput.py"
