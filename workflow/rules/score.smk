# Stage 6: pass@1 with intervals, paired tests against dense, throughput and fidelity.


rule score:
    input:
        runs=[path for entry in SCORED for key, path in entry.items() if key not in ("benchmark", "variant")],
        generated=after_generate(BENCHMARKS),
    output:
        scores=report(
            f"{RUN}/score/scores.parquet",
            caption="../report/scores.rst",
            category="3. Scores",
        ),
        # LiveCodeBench per difficulty (empty without such a benchmark)
        subsets=report(
            f"{RUN}/score/subsets.parquet",
            caption="../report/subsets.rst",
            category="3. Scores",
        ),
    params:
        code=code("score"),
        entries=SCORED,
        benchmarks=BENCHMARKS,
    log:
        f"{RUN}/logs/score.log",
    benchmark:
        f"{RUN}/benchmarks/score.tsv",
    conda:
        "../../envs/execute.yaml"
    script:
        "../scripts/score.py"
