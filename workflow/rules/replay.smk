# Measured replay: every variant's routing, as the traffic replay schedules it, timed on a
# real skip path of this machine (skipbench/speed/replay.py), and the this-machine cost model
# fitted once per machine on dense's replayed routing (skipbench/speed/replay_fit.py).
# Needs routing traces (an eager engine) and a dense variant.

REPLAY = config["replay"]
# The fit file is keyed by the machine, not by the variant list: adding a variant does not refit.
REPLAY_MACHINE = MACHINE  # rules/roofline.smk
REPLAY_BENCHMARKS = [b for b in BENCHMARKS if "dense" in generated_variants(b)] if TRACING and REPLAY["enabled"] else []


if REPLAY_BENCHMARKS:

    rule replay_fit:
        input:
            model=engine_model_dir,
            dense=f"{RUN}/infer/{REPLAY_BENCHMARKS[0]}/dense/trace.parquet",
            generated=after_generate(REPLAY_BENCHMARKS[:1]),  # judged after generate (common.smk)
        output:
            f"{RUN}/replay/fit-{REPLAY_MACHINE}.parquet",
        params:
            code=code("replay_fit"),
            replay=REPLAY,
            concurrency=TRAFFIC_CONCURRENCY,
        log:
            f"{RUN}/logs/replay/fit-{REPLAY_MACHINE}.log",
        benchmark:
            f"{RUN}/benchmarks/replay/fit-{REPLAY_MACHINE}.tsv",
        threads: REPLAY["threads"]
        conda:
            "../../envs/model.yaml"
        script:
            "../scripts/replay_fit.py"


    rule replay:
        input:
            model=engine_model_dir,
            fit=rules.replay_fit.output[0],
            traces=lambda wc: [f"{RUN}/infer/{wc.benchmark}/{v}/trace.parquet" for v in generated_variants(wc.benchmark)],
            generated=after_generate_for,
        output:
            report(f"{RUN}/replay/{{benchmark}}.parquet", caption="../report/replay.rst", category="5. Throughput",
                   subcategory="measured replay"),
        params:
            code=code("replay"),
            replay=REPLAY,
            variants=lambda wc: generated_variants(wc.benchmark),
            rules=lambda wc: {v: VARIANTS[v] for v in generated_variants(wc.benchmark)},
            concurrency=TRAFFIC_CONCURRENCY,
        wildcard_constraints:
            benchmark="|".join(REPLAY_BENCHMARKS),
        log:
            f"{RUN}/logs/replay/{{benchmark}}.log",
        benchmark:
            f"{RUN}/benchmarks/replay/{{benchmark}}.tsv",
        threads: REPLAY["threads"]
        conda:
            "../../envs/model.yaml"
        script:
            "../scripts/replay.py"
