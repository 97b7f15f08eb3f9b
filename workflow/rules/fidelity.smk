# Stage 6b: teacher-forced fidelity: every variant of a benchmark reads dense's own greedy
# completions; KL to dense and top-1 agreement per decode position, plus the noise floor
# (dense against a second dense run with another batching). transformers oracle.


rule fidelity:
    input:
        unpack(lambda wc: calibration_of(generated_variants(wc.benchmark))),
        model=engine_model_dir,
        dense=f"{RUN}/infer/{{benchmark}}/dense/generations.parquet",
    output:
        f"{RUN}/fidelity/{{benchmark}}.parquet",
    params:
        code=code("fidelity", "oracle", "strategies", "routing", "calibrate", "adapters", "prompts"),
        benchmark=lambda wc: BENCHMARKS[wc.benchmark],
        generation=config["generation"],
        variants=lambda wc: {v: VARIANTS[v] for v in generated_variants(wc.benchmark)},
        batch_size=config["generation"]["batch_size"],
    log:
        f"{RUN}/logs/fidelity/{{benchmark}}.log",
    threads: workflow.cores
    resources:
        mem_mb=4000,
    conda:
        "../../envs/vllm-cpu.yaml"
    script:
        "../scripts/fidelity.py"
