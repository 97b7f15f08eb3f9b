# Stage 7: trade-off figures, regenerated alone with `snakemake -R figures --cores all`.


rule figures:
    input:
        lib("figures"),
        scores=f"{RUN}/score/scores.parquet",
    output:
        report(
            expand(f"{RUN}/figures/tradeoff_{{benchmark}}.{{ext}}", benchmark=BENCHMARKS, ext=["png", "svg"]),
            caption="../report/tradeoff.rst",
            category="4. Trade-off",
        ),
    params:
        benchmarks=list(BENCHMARKS),
        run=config["run"],
    log:
        f"{RUN}/logs/figures.log",
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/figures.py"
