"""HTML views of the report's tables, so report.html shows the numbers themselves.

Snakemake's report embeds a result by its mimetype: Parquet is not one a browser shows,
so every table also gets a self-contained HTML page (a sortable table: click a header).
The summary view renders the summary's own Markdown (skipbench.report.summary_table.markdown), so the
two never disagree on a column.
"""

from __future__ import annotations

import html
import math
import re

import pandas as pd

from skipbench.io import write_text

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em; color: #222; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; cursor: pointer; position: sticky; top: 0; white-space: normal; max-width: 9em; }
td:first-child, th:first-child, td.text { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
p.note { color: #444; max-width: 60em; }
"""
# Click a header to sort by it (numbers as numbers); a second click reverses.
_SORT = """
document.querySelectorAll("th").forEach((th, i) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
  const key = r => { const t = r.cells[i].textContent.trim(), n = parseFloat(t); return isNaN(n) ? t : n; };
  const dir = th.dataset.dir = th.dataset.dir === "1" ? "-1" : "1";
  rows.sort((a, b) => { const x = key(a), y = key(b);
    return (typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : typeof x === "number" ? -1 : 1) * dir; });
  rows.forEach(r => body.appendChild(r));
}));
"""


def page(title: str, header: list[str], rows: list[list[str]], notes: list[str] = ()) -> str:
    """A standalone HTML page: one sortable table and notes below it (all text escaped)."""
    esc = html.escape

    def cell(text: str) -> str:
        numeric = re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?( \[.*\])?( \(p=.*\))?", text) is not None
        cls = "" if numeric or not text else ' class="text"'
        return f"<td{cls}>{esc(text)}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)
    note = "\n".join(f'<p class="note">{esc(n)}</p>' for n in notes if n.strip())
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n<h2>{esc(title)}</h2>\n"
            f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>\n{note}\n"
            f"<script>{_SORT}</script></body></html>\n")  # fmt: skip


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [c.strip().replace("\\|", "|") for c in cells]


def markdown_page(title: str, text: str) -> str:
    """The first Markdown table of `text` as an HTML page; the lines after it as notes."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None or start + 1 >= len(lines):
        return page(title, ["(no table)"], [], lines)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    header = _split_row(lines[start])
    rows = [_split_row(line) for line in lines[start + 2 : end]]
    notes = [line.replace("`", "") for line in lines[end:]]
    return page(title, header, rows, notes)


def _format(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def frame_page(title: str, df: pd.DataFrame, notes: list[str] = ()) -> str:
    """Every column of a table (floats to 4 significant digits) as an HTML page."""
    rows = [[_format(v) for v in rec] for rec in df.itertuples(index=False, name=None)]
    return page(title, [str(c) for c in df.columns], rows, notes)


def write_parquet_view(parquet_path, html_path, title: str) -> None:
    import pyarrow.parquet as pq

    df = pq.read_table(parquet_path).to_pandas()
    write_text(html_path, frame_page(title, df, [f"{len(df)} rows, from {parquet_path}"]))
