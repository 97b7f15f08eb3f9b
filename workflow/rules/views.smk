# HTML views of the report's Parquet tables: report.html shows their numbers (a browser
# cannot show Parquet); the Parquet files stay attached as downloads.
import mimetypes

# Snakemake's report embeds a file with the mimetype Python guesses: without this, Parquet
# is "Could not detect mimetype" and embedded as text/plain.
mimetypes.add_type("application/vnd.apache.parquet", ".parquet")


def table_views():
    """This run's tables that get an HTML view (those that rules of this workflow write)."""
    tables = ["score/scores"] + (["score/subsets"] if SUBSET_SCORED else []) + [f"throughput/{v}" for v in THROUGHPUT_VARIANTS]
    own = REPORT_RUNS[config["run"]]
    tables += [f"traffic/{b}" for b in own["traffic"]]
    if own["predictions"]:
        tables += ["roofline/predictions", "roofline/validation"]
    tables.append("roofline/published_serving")  # needs no trace
    return [f"{RUN}/views/{t}.html" for t in tables]


rule table_view:
    input:
        table=f"{RUN}/{{table}}.parquet",
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
