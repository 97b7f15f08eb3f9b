# Expert traffic from the routing traces, and the roofline model that predicts decode time
# per step on a hardware profile, validated against what this workflow measured.
# Traces need an eager engine (a replayed CUDA graph skips the Python hook): without them,
# these rules are absent and the report says so.

from skipbench.speed.specs import machine_key, measured_profiles

ROOFLINE = config["roofline"]
# Profiles measured on this machine (a `measure:` block: this-machine) are measured by their
# own job, kept per machine key and not per variant list: an added variant, or a rerun of the
# roofline, reuses the measurement, so no other variant's prediction moves.
MACHINE = machine_key()
MEASURED_HERE = [h for h in measured_profiles(ROOFLINE["hardware"]) if "/" not in h]  # a path profile: measured in the roofline job
# Batch sizes the traffic is counted at: the throughput sweep plus the deployment batch.
TRAFFIC_CONCURRENCY = sorted(set(THROUGHPUT["concurrency"]) | {config["report"]["deployment_batch"]})


if TRACING:

    rule traffic:
        input:
            model=engine_model_dir,
            traces=lambda wc: [f"{RUN}/infer/{wc.benchmark}/{v}/trace.parquet" for v in generated_variants(wc.benchmark)],
            generated=after_generate_for,
        output:
            f"{RUN}/traffic/{{benchmark}}.parquet",
        params:
            code=code("traffic"),
            variants=lambda wc: generated_variants(wc.benchmark),
            # batch_aware masks are recomputed per replayed batch from the variant's rule
            rules=lambda wc: {v: VARIANTS[v] for v in generated_variants(wc.benchmark)},
            concurrency=TRAFFIC_CONCURRENCY,
            weight_dtype=ROOFLINE["weight_dtype"],
        log:
            f"{RUN}/logs/traffic/{{benchmark}}.log",
        benchmark:
            f"{RUN}/benchmarks/traffic/{{benchmark}}.tsv",
        conda:
            "../../envs/model.yaml"  # torch: the batch_aware rule
        script:
            "../scripts/traffic.py"


    rule machine:
        input:
            model=engine_model_dir,
        output:
            f"{RUN}/roofline/machine/{{profile}}-{MACHINE}.json",
        params:
            code=code("machine", files=[f"config/hardware/{h}.yaml" for h in MEASURED_HERE if "/" not in h]),
        log:
            f"{RUN}/logs/roofline/machine-{{profile}}.log",
        threads: 1  # the layer is timed on one thread
        conda:
            "../../envs/model.yaml"
        script:
            "../scripts/machine.py"


    rule roofline:
        input:
            model=engine_model_dir,
            machine=[f"{RUN}/roofline/machine/{h}-{MACHINE}.json" for h in MEASURED_HERE],
            traffic=f"{RUN}/traffic/{THROUGHPUT_BENCHMARK}.parquet",
            throughput=expand(f"{RUN}/throughput/{{variant}}.parquet", variant=THROUGHPUT_VARIANTS),
            generated=after_generate(BENCHMARKS),
        output:
            predictions=f"{RUN}/roofline/predictions.parquet",
            validation=f"{RUN}/roofline/validation.parquet",
        params:
            # the hardware profiles and the calibration data they name (measured kernel times, with their source)
            code=code("roofline", files=[f"config/hardware/{h}.yaml" for h in ROOFLINE["hardware"] if "/" not in h]
                                + [f"config/hardware/{p.name}" for p in sorted(Path(workflow.basedir, "config", "hardware").glob("*.csv"))]),
            roofline=ROOFLINE,
            # KV-cache reads at the mean context of a generated token: prompt + half the output.
            context_len=config["generation"]["max_new_tokens"] // 2 + 256,
            measured_here=MEASURED_HERE,
        log:
            f"{RUN}/logs/roofline.log",
        benchmark:
            f"{RUN}/benchmarks/roofline.tsv",
        threads: workflow.cores
        conda:
            "../../envs/model.yaml"
        script:
            "../scripts/roofline.py"


# Needs no trace: the DeepSeek-V3 shape's serving prediction beside published measurements.
# The repository's files it reads are params (content hashes), not inputs: under a remote
# default storage an input path would be looked up in the storage.
rule published_serving:
    output:
        f"{RUN}/roofline/published_serving.parquet",
    params:
        code=code("published_serving", files=[f"config/hardware/{f}" for f in ("published_serving.yaml", "h200.yaml",
                                              "h200-measured.yaml", "h800.yaml", "h200_moe_layer_2026-11-28.csv")]),
    log:
        f"{RUN}/logs/published_serving.log",
    benchmark:
        f"{RUN}/benchmarks/published_serving.tsv",
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/published_serving.py"
