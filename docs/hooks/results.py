"""mkdocs hook: results tables rendered at build time from the files ``ichor benchmark`` wrote.

A page holds a marker ``<!-- results: NAME -->``. The folder ``docs/results/NAME/`` holds what the
benchmark wrote into its ``--out`` folder (``benchmark_summary.csv``, ``benchmark_paired.csv``,
``benchmark_ceiling.csv``, ``benchmark_pretraining.csv``, ``benchmark_site_gap.csv``, ``figures/<task>.png``), copied as they
are, and ``command.txt``: the command that wrote them and the date it ran. The marker becomes that
command, then the benchmark's own tables, drawn by :mod:`ichor.benchmark.report` (so the docs and
``benchmark_summary.md`` read the same), then its figures. A figure is never typed into a page by
hand: a marker whose folder or command is missing stops the build.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

MARKER = re.compile(r"<!--\s*results:\s*(?P<name>[\w.-]+)\s*-->")
COMMAND_FILE = "command.txt"
# What the summary's mean ± std is over. The benchmark names it from its config (held-out studies or
# subject folds, how many seeds), which its CSV files do not hold; this wording is true of every run.
SPREAD_OVER = "folds and seeds"


def _tables(folder: Path) -> list[str]:
    """The benchmark's Markdown sections for each of its CSV files present in ``folder``, in report order."""
    from ichor.benchmark import report

    renderers = [
        ("benchmark_summary.csv", lambda summary: report.markdown(summary, SPREAD_OVER)),
        ("benchmark_ceiling.csv", report.ceiling_markdown),
        ("benchmark_paired.csv", report.paired_markdown),
        ("benchmark_pretraining.csv", report.pretraining_markdown),
        ("benchmark_site_gap.csv", report.site_gap_markdown),
    ]
    sections = []
    for name, render in renderers:
        path = folder / name
        if path.is_file() and path.stat().st_size > 1:  # an empty table is written as a bare newline
            sections.append(render(pd.read_csv(path)))
    known = {name for name, _ in renderers}
    for path in sorted(folder.glob("*.csv")):  # a benchmarks/ script's own table, shown as it wrote it
        if path.name not in known:
            sections.append(_plain_table(pd.read_csv(path)))
    return sections


def _plain_table(table: pd.DataFrame) -> str:
    """A CSV as a Markdown table, numbers to three decimals."""
    cells = table.map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + " --- |" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)])


def _demoted(markdown: str) -> str:
    """The report's headings one level down, its page title dropped: the page owns the top levels."""
    lines = [line for line in markdown.splitlines() if not line.startswith("# ")]
    return "\n".join("#" + line if line.startswith("#") else line for line in lines)


def render(folder: Path, page_dir: Path) -> str:
    """The Markdown for one results folder; figure links relative to ``page_dir`` (the page's own folder)."""
    command = folder / COMMAND_FILE
    if not command.is_file():
        raise ValueError(f"results {folder}: no {COMMAND_FILE} (the command that wrote these files, and its date)")
    sections = _tables(folder)
    if not sections:
        raise ValueError(f"results {folder}: no CSV file there")
    parts = [f"```bash\n{command.read_text().strip()}\n```", *(_demoted(s) for s in sections)]
    for figure in sorted((folder / "figures").glob("*.png")):
        parts.append(f"![{figure.stem}]({Path(os.path.relpath(figure, page_dir)).as_posix()})")
    return "\n\n".join(parts) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    docs = Path(config["docs_dir"])
    page_dir = (docs / page.file.src_path).parent
    return MARKER.sub(lambda match: render(docs / "results" / match["name"], page_dir), markdown)
