# HTML views of the report's Parquet tables: report.html shows their numbers (a browser
# cannot show Parquet); the Parquet files stay attached as downloads.
import mimetypes

# Snakemake's report embeds a file with the mimetype Python guesses: without this, Parquet
# is "Could not detect mimetype" and embedded as text/plain.
mimetypes.add_type("application/vnd.apache.parquet", ".parquet")


def view_tables():
    """This run's tables that get an HTML view (those that rules of this workflow write)."""
    tables = ["score/scores"] + (["score/subsets"] if SUBSET_SCORED else []) + [f"throughput/{v}" for v in THROUGHPUT_VARIANTS]
    own = REPORT_RUNS[config["run"]]
    tables += [f"traffic/{b}" for b in own["traffic"]]
    if own["predictions"]:
        tables += ["roofline/predictions", "roofline/validation"]
    return tables


def table_views():
    return [f"{RUN}/views/{t}.html" for t in view_tables()]


# One job for every view (they take a second each): the report's rule graph shows one node
# for it, where one job per table sat at four DAG levels and drew four nodes.
rule table_views:
    input:
        [f"{RUN}/{t}.parquet" for t in view_tables()],
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
