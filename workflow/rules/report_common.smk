# Stage 7: the report: summary table and figures from the Parquet tables, regenerated alone
# with `snakemake -R figures --cores all` (reads tables only: nothing upstream reruns).
# Optional tables (throughput sweep, roofline, traffic) are read when the stage writing them
# is part of this workflow; without them the figures say "no data". report.combine names
# other finished runs (results/<run>/) whose tables are faceted in by run (= model).

REPORT = config["report"]
COMBINE = [name for name in REPORT.get("combine", []) if name != config["run"]]
DEPLOYMENT_BATCH = REPORT["deployment_batch"]
# Roofline profiles in the order the summary prefers them (report.hardware first).
HARDWARE = [h for h in [REPORT.get("hardware")] if h] + config.get("roofline", {}).get("hardware", [])


def run_tables(run, own):
    """Paths of one run's tables. Own run: what this workflow produces; combined runs: the
    files present under results/<run>/ (their scores are required)."""
    root = f"results/{run}"
    tables = {
        "scores": f"{root}/score/scores.parquet",
        "throughput": [f"{root}/throughput/{v}.parquet" for v in (THROUGHPUT_VARIANTS if own else VARIANTS)],
        "predictions": f"{root}/roofline/predictions.parquet",
        "traffic": {b: f"{root}/traffic/{b}.parquet" for b in BENCHMARKS if generated_variants(b)},
        "replay": {b: f"{root}/replay/{b}.parquet" for b in BENCHMARKS if generated_variants(b)},
    }
    if own:
        return tables | {
            "predictions": tables["predictions"] if rules.has("roofline") else None,
            "traffic": tables["traffic"] if rules.has("traffic") else {},
            "replay": {b: p for b, p in tables["replay"].items() if b in REPLAY_BENCHMARKS},
        }
    if not Path(tables["scores"]).exists():
        raise ValueError(f"report.combine: run {run!r} has no {tables['scores']} (run its workflow first)")
    return {
        "scores": tables["scores"],
        "throughput": [p for p in tables["throughput"] if Path(p).exists()],
        "predictions": tables["predictions"] if Path(tables["predictions"]).exists() else None,
        "traffic": {b: p for b, p in tables["traffic"].items() if Path(p).exists()},
        "replay": {b: p for b, p in tables["replay"].items() if Path(p).exists()},
    }


REPORT_RUNS = {config["run"]: run_tables(config["run"], own=True)} | {r: run_tables(r, own=False) for r in COMBINE}


def report_inputs():
    """Every table the figure stage reads, as one flat list (Snakemake input)."""
    files = []
    for t in REPORT_RUNS.values():
        files += [t["scores"], *t["throughput"], *t["traffic"].values(), *t["replay"].values()] + [t["predictions"] or []]
    return files


# Figure kinds: caption, report category, subcategory. Per benchmark unless marked once.
FIGURE_KINDS = {
    "tradeoff": ("tradeoff.rst", "4. Trade-off", "quality vs measured cost"),
    "predicted": ("predicted.rst", "4. Trade-off", "quality vs speedup at the deployment batch"),
    "fidelity": ("fidelity.rst", "4. Trade-off", "fidelity to dense"),
    "pareto": ("pareto.rst", "0. Summary", "Pareto-optimal variants"),
    "layers": ("layers.rst", "6. Expert traffic", "per-layer heatmaps"),
    "speedup": ("speedup.rst", "5. Throughput", "speedup vs batch size"),
}


def figure_outputs():
    """Report-flagged paths of every figure file (fixed list, see skipbench.report)."""
    out = []
    for kind, (caption, category, subcategory) in FIGURE_KINDS.items():
        for stem in [kind] if kind == "speedup" else [f"{kind}_{b}" for b in BENCHMARKS]:
            out += [report(f"{RUN}/figures/{stem}.{ext}", caption=f"../report/{caption}", category=category,
                           subcategory=subcategory, labels={"figure": stem, "format": ext.upper()})
                    for ext in ("png", "svg")]  # fmt: skip
    return out


def attached_tables():
    """This run's roofline and traffic tables, attached to the report with their captions."""
    own = REPORT_RUNS[config["run"]]
    tables = [(p, "traffic.rst", "6. Expert traffic", f"traffic_{b}") for b, p in own["traffic"].items()]
    if own["predictions"]:
        tables += [(own["predictions"], "roofline.rst", "5. Throughput", "predictions"),
                   (f"{RUN}/roofline/validation.parquet", "validation.rst", "5. Throughput", "validation")]  # fmt: skip
    return [report(p, caption=f"../report/{caption}", category=category, subcategory="tables", labels={"table": name})
            for p, caption, category, name in tables]  # fmt: skip


# HTML views of the tables (rules/views.smk).
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
    tables.append("roofline/published_serving")  # needs no trace
    return tables


def table_views():
    return [f"{RUN}/views/{t}.html" for t in view_tables()]
