# Stage 6: pass@1 with intervals, paired tests against dense, throughput and fidelity.


rule score:
    input:
        lib("score"),
        runs=[path for entry in SCORED for key, path in entry.items() if key not in ("benchmark", "variant")],
    output:
        scores=report(
            f"{RUN}/score/scores.parquet",
            caption="../report/scores.rst",
            category="3. Scores",
        ),
    params:
        entries=SCORED,
    log:
        f"{RUN}/logs/score.log",
    benchmark:
        f"{RUN}/benchmarks/score.tsv",
    conda:
        "../../envs/execute.yaml"
    script:
        "../scripts/score.py"
