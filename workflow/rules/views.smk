# HTML views of the report's Parquet tables: report.html shows their numbers (a browser
# cannot show Parquet); the Parquet files stay attached as downloads.
# Which tables get a view: report_common.smk view_tables().


# One job for every view (they take a second each): the report's rule graph shows one node
# for it, where one job per table sat at four DAG levels and drew four nodes.
rule table_views:
    input:
        tables=[f"{RUN}/{t}.parquet" for t in view_tables()],
        generated=after_generate(BENCHMARKS),  # the throughput tables' views wait too: one rule
    output:
        [report(f"{RUN}/views/{t}.html", caption="../report/view.rst", category="7. Tables", subcategory=t,
                labels={"table": t, "format": "HTML (view)"}) for t in view_tables()],  # fmt: skip
    params:
        code=code("table_view"),
        titles=view_tables(),
    log:
        f"{RUN}/logs/views.log",
    benchmark:
        f"{RUN}/benchmarks/views.tsv",
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/table_view.py"
