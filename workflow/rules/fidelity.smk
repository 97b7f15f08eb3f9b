# Stage 6b: teacher-forced fidelity: each variant of a benchmark reads dense's own greedy
# completions; KL to dense and top-1 agreement per decode position. dense's job measures
# the noise floor (dense in fp32 against dense in the serving dtype), which every other
# variant's table repeats. One job per variant: an added variant runs only its own.
# transformers oracle.


rule fidelity:
    input:
        unpack(calibration_for),
        unpack(lambda wc: {} if wc.variant == "dense" else {"noise_floor": f"{RUN}/fidelity/{wc.benchmark}/dense.parquet"}),
        model=engine_model_dir,
        dense=f"{RUN}/infer/{{benchmark}}/dense/generations.parquet",
    output:
        f"{RUN}/fidelity/{{benchmark}}/{{variant}}.parquet",
    params:
        code=code("fidelity"),
        benchmark=lambda wc: tasks_of(wc.benchmark),
        generation=config["generation"],
        variant=lambda wc: VARIANTS[wc.variant],
        batch_size=config["generation"]["batch_size"],
        deployment_batch=config["report"]["deployment_batch"],  # batch_aware generated at it
        serving_dtype=config["engine"]["dtype"],
    log:
        f"{RUN}/logs/fidelity/{{benchmark}}/{{variant}}.log",
    benchmark:
        f"{RUN}/benchmarks/fidelity/{{benchmark}}/{{variant}}.tsv",
    # the synthetic model only (common.smk TEACHER_FORCED): start-up dominates, so one
    # thread per job and jobs side by side
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/vllm-cpu.yaml"
    script:
        "../scripts/fidelity.py"
