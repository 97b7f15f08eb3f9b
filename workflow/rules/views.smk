# HTML views of the report's Parquet tables: report.html shows their numbers (a browser
# cannot show Parquet); the Parquet files stay attached as downloads.
# Which tables get a view: report_common.smk table_views().


rule table_view:
    input:
        table=f"{RUN}/{{table}}.parquet",
        generated=after_generate(BENCHMARKS),  # the throughput tables' views wait too: one rule
    output:
        report(f"{RUN}/views/{{table}}.html", caption="../report/view.rst", category="7. Tables",
               subcategory="{table}", labels={"table": "{table}", "format": "HTML (view)"}),  # fmt: skip
    params:
        code=code("table_view"),
    wildcard_constraints:
        table="(score|throughput|traffic|roofline)/[A-Za-z0-9._-]+",
    log:
        f"{RUN}/logs/views/{{table}}.log",
    benchmark:
        f"{RUN}/benchmarks/views/{{table}}.tsv",
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/table_view.py"
