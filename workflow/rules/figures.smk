# Stage 7: summary table and figures from the Parquet tables; `snakemake -R figures`
# regenerates them alone (helpers: report_common.smk).

rule figures:
    input:
        tables=report_inputs(),
        attached=attached_tables(),  # whichever rule wrote them; score and throughput flag their own
        generated=after_generate(BENCHMARKS),
    output:
        *figure_outputs(),
        summary=report(f"{RUN}/figures/summary.parquet", caption="../report/summary.rst", category="0. Summary",
                       subcategory="summary table", labels={"table": "summary", "format": "Parquet"}),
        summary_md=report(f"{RUN}/figures/summary.md", caption="../report/summary.rst", category="0. Summary",
                          subcategory="summary table", labels={"table": "summary", "format": "Markdown"}),
        summary_html=report(f"{RUN}/figures/summary.html", caption="../report/summary.rst", category="0. Summary",
                            subcategory="summary table", labels={"table": "summary", "format": "HTML (view)"}),
    params:
        code=code("figures"),
        runs=REPORT_RUNS,
        benchmarks=list(BENCHMARKS),
        deployment_batch=DEPLOYMENT_BATCH,
        hardware=HARDWARE,
    log:
        f"{RUN}/logs/figures.log",
    benchmark:
        f"{RUN}/benchmarks/figures.tsv",
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/figures.py"
