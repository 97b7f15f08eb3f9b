"""Stage 7, report: the summary table and the figures from the runs' Parquet tables.

`draw.py` draws the whole report; `summary.py` joins the tables into the summary and
`summary_table.py` writes it; `figures.py`, `figures_traffic.py` and `figstyle.py` draw
the figures; `report_tables.py` renders tables as HTML views for report.html.
"""

from skipbench.report.draw import draw_report, report_files

__all__ = ["draw_report", "report_files"]
