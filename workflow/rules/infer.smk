# Stage 4: greedy generation per (benchmark, skip variant) with the skip plugin loaded,
# plus the routing trace of every decode step (traces need an eager engine).
#
# An engine that can switch skip rules after its start (eager vLLM, transformers:
# engines.swaps_rules) is started once per benchmark by `generate`, which fills every
# variant's batch cache (resuming what is cached) and writes one mark per variant; `infer`
# then writes each variant's files from its cache (no engine, one core). Otherwise (CUDA
# graphs keep the rule they captured) each `infer` job starts its own engine, and jobs of
# different variants can run on different nodes.
#
# Adding or editing a variant reruns that variant's jobs only: its mark is new (named by a
# hash of its config), the others are read as ancient(). `generate` is a checkpoint so that
# Snakemake plans the rest of the DAG again once it has run: Snakemake 9.27.1 does not look
# at a job's other reasons to rerun (its params, code, inputs) while a job upstream of it is
# planned. After `generate`, the jobs that depend on it directly are judged on their own;
# every job that reads completions is one of them (common.smk after_generate).


checkpoint generate:
    input:
        unpack(lambda wc: calibration_of(generated_variants(wc.benchmark))),
        model=engine_model_dir,
        kernels=f"{RUN}/kernels/manifest.parquet",
    output:
        report=f"{RUN}/generate/{{benchmark}}.parquet",
        # every variant's, also those the benchmark leaves out (their mark says so):
        # a rule's outputs cannot depend on the value of a wildcard
        marks=[generation_mark("{benchmark}", v) for v in VARIANTS],
    params:
        code=code("generate"),
        benchmark=lambda wc: tasks_of(wc.benchmark),
        variants=lambda wc: {v: VARIANTS[v] for v in generated_variants(wc.benchmark)},
        engine=config["engine"],
        generation=config["generation"],
        deployment_batch=config["report"]["deployment_batch"],  # batch_aware variants generate at it
        trace=TRACING,
        cache=lambda wc: f"{RUN}/.cache/infer/{wc.benchmark}",
    log:
        f"{RUN}/logs/generate/{{benchmark}}.log",
    benchmark:
        f"{RUN}/benchmarks/generate/{{benchmark}}.tsv",
    # An engine uses every core (CPU) or its GPUs: run one at a time.
    threads: workflow.cores
    resources:
        gpu=config["engine"]["gpus"],
        mem_mb=8000,
    conda:
        "../../envs/vllm-gpu.yaml" if config["engine"]["gpus"] else "../../envs/vllm-cpu.yaml"
    script:
        "../scripts/generate.py"


rule infer:
    input:
        unpack(calibration_for),
        unpack(generated_for),
        model=engine_model_dir,
        kernels=f"{RUN}/kernels/manifest.parquet",
    output:
        samples=f"{RUN}/infer/{{benchmark}}/{{variant}}/samples.jsonl",
        generations=f"{RUN}/infer/{{benchmark}}/{{variant}}/generations.parquet",
        summary=f"{RUN}/infer/{{benchmark}}/{{variant}}/summary.parquet",
        trace=f"{RUN}/infer/{{benchmark}}/{{variant}}/trace.parquet" if TRACING else [],
    params:
        code=code("infer"),
        benchmark=lambda wc: tasks_of(wc.benchmark),
        variant=lambda wc: VARIANTS[wc.variant],
        engine=config["engine"],
        generation=config["generation"],
        deployment_batch=config["report"]["deployment_batch"],  # batch_aware variants generate at it
        shared_engine=SHARED_ENGINE,
        cache=lambda wc: f"{RUN}/.cache/infer/{wc.benchmark}/{wc.variant}",
    log:
        f"{RUN}/logs/infer/{{benchmark}}/{{variant}}.log",
    benchmark:
        f"{RUN}/benchmarks/infer/{{benchmark}}/{{variant}}.tsv",
    # Its own engine uses every core (CPU) or its GPUs: one at a time. From the cache: one core.
    threads: 1 if SHARED_ENGINE else workflow.cores
    resources:
        gpu=0 if SHARED_ENGINE else config["engine"]["gpus"],
        mem_mb=2000 if SHARED_ENGINE else 8000,
    conda:
        "../../envs/vllm-gpu.yaml" if config["engine"]["gpus"] else "../../envs/vllm-cpu.yaml"
    script:
        "../scripts/infer.py"


# Every (benchmark, variant)'s infer outputs, and the generate outputs: rule all asks for them
# (Snakefile). A killed `generate` (Snakemake removed its outputs when it started) reruns.
INTERMEDIATES = [
    f"{RUN}/infer/{b}/{v}/{name}"
    for b in BENCHMARKS
    for v in generated_variants(b)
    for name in ["samples.jsonl", "generations.parquet", "summary.parquet"] + (["trace.parquet"] if TRACING else [])
] + [
    path
    for b in BENCHMARKS if SHARED_ENGINE and generated_variants(b)
    for path in [f"{RUN}/generate/{b}.parquet"] + [generation_mark(b, v) for v in VARIANTS]
]
