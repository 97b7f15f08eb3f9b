# Stage 4: greedy generation per (benchmark, skip variant) with the skip plugin loaded,
# plus the routing trace of every decode step (traces need an eager engine).


rule infer:
    input:
        unpack(calibration_for),
        lib("infer", "engines", "strategies", "routing", "traces", "vllm_plugin", "oracle", "calibrate"),
        model=engine_model_dir,
        kernels=f"{RUN}/kernels/manifest.parquet",
    output:
        samples=f"{RUN}/infer/{{benchmark}}/{{variant}}/samples.jsonl",
        generations=f"{RUN}/infer/{{benchmark}}/{{variant}}/generations.parquet",
        summary=f"{RUN}/infer/{{benchmark}}/{{variant}}/summary.parquet",
        trace=f"{RUN}/infer/{{benchmark}}/{{variant}}/trace.parquet" if TRACING else [],
    params:
        benchmark=lambda wc: BENCHMARKS[wc.benchmark],
        variant=lambda wc: VARIANTS[wc.variant],
        engine=config["engine"],
        generation=config["generation"],
        cache=lambda wc: f"{RUN}/.cache/infer/{wc.benchmark}/{wc.variant}",
    log:
        f"{RUN}/logs/infer/{{benchmark}}/{{variant}}.log",
    # An engine uses every core (CPU) or its GPUs: run one at a time.
    threads: workflow.cores
    resources:
        gpu=config["engine"]["gpus"],
        mem_mb=8000,
    conda:
        "../../envs/vllm-gpu.yaml" if config["engine"]["gpus"] else "../../envs/vllm-cpu.yaml"
    script:
        "../scripts/infer.py"
