"""QEI of many scans: manifest rows scored in parallel, failures kept as row problems, tables written.

The library behind ``ichor qei``: a row that fails (missing or unreadable file, tissue map on
another grid, empty tissue mask, empty gm/wm/csf cell) becomes a :class:`Problem` naming the
manifest, row and file, and the good rows are still scored.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from ichor.data.manifest import Problem, RowError, load_row
from ichor.data.scans import ScanError, load_cbf
from ichor.data.schema import ID_COLUMNS, PATH_COLUMNS, TISSUE_COLUMNS
from ichor.io import write_csv
from ichor.quality.qei import QEIError, QEIResult, compute_qei

OUTPUT_COLUMNS = (*ID_COLUMNS, "qei", "rho_ss", "di", "neg_gm")
ROWS_PER_TASK = 4  # rows handed to a worker at a time: few enough to keep a progress bar moving
RowKey = tuple[str, int]  # (manifest, row)


class ScanFailure(Exception):
    """A scan that could not be scored: the file concerned and what is wrong with it."""

    def __init__(self, file: str, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file, self.message = file, message


def score_scan(
    cbf_path: str, tissues: dict[str, str] | None, thresh: float, notes: list[str] | None = None
) -> QEIResult:
    """QEI of one CBF file; ``tissues`` maps gm/wm/csf to files on its grid, or None for MNI priors.

    Doubts that do not stop the scoring (a map that may not be in MNI space) go to ``notes``.
    """
    record = {"manifest": "", "row": 0, "path": cbf_path, **(tissues or {})}
    try:
        return _score(record, tissues is None, thresh, notes)
    except RowError as error:
        raise ScanFailure(error.problem.path or "", error.problem.message) from error


def _score(record: dict, mni_priors: bool, thresh: float, notes: list[str] | None = None) -> QEIResult:
    """QEI of a manifest row; raises RowError naming the row and file."""
    if mni_priors:
        from ichor.quality.priors import mni_space_doubt, priors_on_grid  # nilearn is slow to import

        try:
            cbf = load_cbf(record["path"])
        except ScanError as error:
            raise RowError.at(record, str(error)) from error
        doubt = mni_space_doubt(cbf)
        if doubt and notes is not None:
            notes.append(doubt)
        maps = list(priors_on_grid(cbf))
    else:
        cbf, maps = load_row(record, TISSUE_COLUMNS)
    try:
        return compute_qei(cbf, *maps, thresh=thresh)
    except QEIError as error:
        hint = " (--mni-priors needs maps in MNI space)" if mni_priors else ""
        raise RowError.at(record, f"{error}{hint}") from error


def _score_row(task: tuple[dict, bool, float]) -> tuple[RowKey, QEIResult | Problem, list[Problem]]:
    """Score one manifest row in a worker; a failure comes back as a Problem, not an exception, and
    doubts as notes about the row."""
    record, mni_priors, thresh = task
    key = (record["manifest"], record["row"])
    found: list[str] = []
    try:
        outcome: QEIResult | Problem = _score(record, mni_priors, thresh, found)
    except RowError as error:
        outcome = error.problem
    notes = [Problem(str(record["manifest"]), int(record["row"]), Path(record["path"]).name, note) for note in found]
    return key, outcome, notes


def score_rows(
    records: list[dict], mni_priors: bool, thresh: float, workers: int = 1
) -> Iterator[tuple[RowKey, QEIResult | Problem, list[Problem]]]:
    """Score ``read_manifests`` records in order, in this process or in a pool of ``workers`` processes:
    (row, result or problem, notes about the row)."""
    tasks = [(record, mni_priors, thresh) for record in records]
    if workers == 1 or len(tasks) <= 1:
        yield from map(_score_row, tasks)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        yield from pool.map(_score_row, tasks, chunksize=ROWS_PER_TASK)


def missing_tissue_problems(rows: pd.DataFrame) -> list[Problem]:
    """Manifests without gm/wm/csf columns (one problem each) and rows with an empty one."""
    problems = []
    for manifest, table in rows.groupby("manifest", sort=False):
        values = {
            column: table[column].fillna("") if column in table else pd.Series("", index=table.index)
            for column in TISSUE_COLUMNS
        }
        absent = [column for column in TISSUE_COLUMNS if (values[column] == "").all()]
        if absent:
            problems.append(
                Problem(
                    str(manifest),
                    None,
                    None,
                    (
                        f"no {', '.join(absent)} column(s): add tissue probability maps on the CBF grid, "
                        "or use --mni-priors for maps in MNI space"
                    ),
                )
            )
            continue
        for index in table.index:
            empty = [column for column in TISSUE_COLUMNS if values[column][index] == ""]
            if empty:
                file = Path(table.at[index, "path"]).name
                problems.append(Problem(str(manifest), int(table.at[index, "row"]), file, f"empty {', '.join(empty)}"))
    return problems


def result_table(rows: pd.DataFrame, results: dict[RowKey, QEIResult]) -> pd.DataFrame:
    """One output row per scored manifest row, in manifest order."""
    records = []
    for record in rows.to_dict("records"):
        result = results.get((record["manifest"], record["row"]))
        if result is not None:
            records.append({**{column: record[column] for column in ID_COLUMNS}, **vars(result)})
    return pd.DataFrame(records, columns=OUTPUT_COLUMNS)


def write_annotated(manifest: str, out: str, results: dict[RowKey, QEIResult]) -> None:
    """A copy of ``manifest`` with a qei column (empty for failed rows), its relative paths re-based on OUT's folder."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    table.columns = [str(column).strip() for column in table.columns]
    source, target = Path(manifest).resolve().parent, Path(out).resolve().parent
    for column in PATH_COLUMNS:
        if column in table.columns and source != target:
            table[column] = [_rebase(value, source, target) for value in table[column]]
    scored = [results.get((manifest, row)) for row in range(1, len(table) + 1)]
    table["qei"] = [None if result is None else result.qei for result in scored]
    write_csv(table, out)


def _rebase(value: str, source: Path, target: Path) -> str:
    """A manifest path relative to ``source`` rewritten relative to ``target`` (absolute ones unchanged)."""
    value = value.strip()
    if not value or Path(value).expanduser().is_absolute():
        return value
    return os.path.relpath(os.path.abspath(source / value), target)
