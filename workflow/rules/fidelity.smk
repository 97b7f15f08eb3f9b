# Stage 6b: teacher-forced fidelity: each variant of a benchmark reads dense's own greedy
# completions; KL to dense and top-1 agreement per decode position. dense's job measures
# the noise floor (dense in fp32 against dense in the serving dtype), which every other
# variant's table repeats. One job per variant: an added variant runs only its own.
# transformers oracle.


rule fidelity:
    input:
        unpack(calibration_for),
        noise_floor=f"{RUN}/fidelity/{{benchmark}}/dense.parquet",
        model=engine_model_dir,
        dense=f"{RUN}/infer/{{benchmark}}/dense/generations.parquet",
        generated=after_generate_for,
    output:
        f"{RUN}/fidelity/{{benchmark}}/{{variant}}.parquet",
    wildcard_constraints:
        variant="(?!dense$)[A-Za-z0-9._-]+",
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


# dense's own job (the noise floor every other variant repeats) is a rule of its own: the
# report's rule graph then shows each rule once (Snakemake draws a rule once per DAG level).
use rule fidelity as fidelity_noise_floor with:
    input:
        model=engine_model_dir,
        dense=f"{RUN}/infer/{{benchmark}}/dense/generations.parquet",
        generated=after_generate_for,  # judged after generate (common.smk after_generate)
    wildcard_constraints:
        variant="dense",
