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
p.warning { color: #fff; background: #b00020; padding: 6px 10px; font-weight: bold; max-width: 60em; }
h3 { margin: 1.2em 0 0.4em; }
"""
# Click a header to sort by it (numbers as numbers); a second click reverses.
_SORT = """
document.querySelectorAll("th").forEach(th => th.addEventListener("click", () => {
  const i = th.cellIndex;
  const body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
  const key = r => { const t = r.cells[i].textContent.trim(), n = parseFloat(t); return isNaN(n) ? t : n; };
  const dir = th.dataset.dir = th.dataset.dir === "1" ? "-1" : "1";
  rows.sort((a, b) => { const x = key(a), y = key(b);
    return (typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : typeof x === "number" ? -1 : 1) * dir; });
  rows.forEach(r => body.appendChild(r));
}));
"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    esc = html.escape

    def cell(text: str) -> str:
        numeric = re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?( \[.*\])?( \(p=.*\))?", text) is not None
        cls = "" if numeric or not text else ' class="text"'
        return f"<td{cls}>{esc(text)}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def _page(title: str, parts: list[str]) -> str:
    esc = html.escape
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n<h2>{esc(title)}</h2>\n" + "\n".join(parts)
            + f"\n<script>{_SORT}</script></body></html>\n")  # fmt: skip


def page(title: str, header: list[str], rows: list[list[str]], notes: list[str] = ()) -> str:
    """A standalone HTML page: one sortable table and notes below it (all text escaped)."""
    return _page(title, [_table(header, rows)] + [f'<p class="note">{html.escape(n)}</p>' for n in notes if n.strip()])


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [c.strip().replace("\\|", "|") for c in cells]


def markdown_page(title: str, text: str) -> str:
    """Every Markdown table of `text` as a sortable HTML table; `### ` lines as headings,
    `**...**` lines as warnings, other lines as notes."""
    parts, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            end = next((j for j in range(i, len(lines)) if not lines[j].startswith("|")), len(lines))
            parts.append(_table(_split_row(line), [_split_row(r) for r in lines[i + 2 : end]]))
            i = end
            continue
        text_ = html.escape(line.replace("`", "").replace("**", ""))
        if line.startswith("### "):
            parts.append(f"<h3>{text_[4:]}</h3>")
        elif line.startswith("**"):
            parts.append(f'<p class="warning">{text_}</p>')
        elif line.strip():
            parts.append(f'<p class="note">{text_}</p>')
        i += 1
    return _page(title, parts or ["<p>(no table)</p>"])


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
