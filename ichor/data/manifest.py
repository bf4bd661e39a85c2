"""Per-study CSV manifests: read them for training, or check them and report every problem.

A manifest lists one CBF map per row, in the columns of :mod:`ichor.data.schema` (see
data_manifests/README.md). ``read_manifest(s)`` is what the datamodule calls: it validates
the table itself and raises one ``ManifestError`` listing all structural problems, but
opens no image (the datamodule has its own policy for bad scans). ``check_manifests`` is what ``ichor manifest check`` calls:
it also opens every image and collects every problem instead of stopping at the first.
Both refuse one scan in two rows, by label or by content (:mod:`ichor.data.identity`): a copied
row, ``sub-01`` beside ``01``, one file spelled two ways, or a byte-identical copy at another
path, so that a subject-grouped split can never put one scan in train and test.
Neither writes anything to the manifests or the maps.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from os import PathLike
from pathlib import Path

import nibabel as nib
import pandas as pd
from tqdm import tqdm

from ichor.data.coverage import brain_coverage
from ichor.data.identity import same_scans
from ichor.data.scans import ScanError, load_cbf, load_tissue_map
from ichor.data.schema import (
    ADDED_COLUMNS,
    NUMERIC_COLUMNS,
    PATH_COLUMNS,
    PLAUSIBLE_RANGES,
    REQUIRED_COLUMNS,
    TEXT_COLUMNS,
)
from ichor.data.workers import single_threaded

ManifestPath = str | PathLike
# Below this many maps to open, ``check_manifests`` opens them in this process (starting a pool costs more).
MIN_MAPS_FOR_WORKERS = 16
# How tables write a missing value (BIDS' participants.tsv writes n/a): read as empty in every optional column,
# so that "n/a" is never a diagnosis class or a number that fails to parse.
MISSING_MARKERS = frozenset({"n/a", "N/A", "NA", "NaN", "nan"})


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the manifest and row of each problem."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a manifest; ``row`` is 1-based (first data row), None for the whole file."""

    manifest: str
    row: int | None
    path: str | None
    message: str

    def __str__(self) -> str:
        where = self.manifest if self.row is None else f"{self.manifest} row {self.row}"
        if self.path:
            where += f" ({self.path})"
        return f"{where}: {self.message}"


class RowError(ValueError):
    """A manifest row whose maps cannot be used; ``problem`` names the manifest, the row and the file."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem

    @classmethod
    def at(cls, record: dict, message: str, file: str | None = None) -> RowError:
        """The error of ``read_manifests`` row ``record`` about ``file`` (by default its CBF map)."""
        return cls(Problem(str(record["manifest"]), int(record["row"]), Path(file or record["path"]).name, message))


def load_row(
    record: dict, tissues: Sequence[str] = (), volume: int | str | None = None, purpose: str = ""
) -> tuple[nib.Nifti1Image, list[nib.Nifti1Image]]:
    """The CBF map of one ``read_manifests`` row and its ``tissues`` maps (e.g. gm, wm), on its grid.

    Raises :class:`RowError` naming the row and the file at fault: an empty tissue cell (``purpose``
    says what needed it), or a map that fails the checks of :mod:`ichor.data.scans`.
    """
    empty = [column for column in tissues if pd.isna(record.get(column)) or not str(record.get(column)).strip()]
    if empty:
        needs = f" ({purpose} needs {', '.join(tissues)} tissue maps on the CBF grid)" if purpose else ""
        raise RowError.at(record, f"empty {', '.join(empty)}{needs}")
    try:
        cbf = load_cbf(record["path"], volume)
    except ScanError as error:
        raise RowError.at(record, str(error)) from error
    maps = []
    for column in tissues:
        try:
            maps.append(load_tissue_map(record[column], reference=cbf))
        except ScanError as error:
            raise RowError.at(record, f"{column} map: {error}", record[column]) from error
    return cbf, maps


def expand_manifests(paths: Iterable[ManifestPath]) -> list[str]:
    """Manifest paths with each folder replaced by the ``*.csv`` files in it, sorted by name.

    A folder of per-study manifests (``data_manifests/demo``) is then one config entry; a folder
    without any CSV is an error, so that a mistyped path does not train on nothing.
    """
    expanded = []
    for path in paths:
        if Path(path).is_dir():
            found = sorted(str(csv) for csv in Path(path).glob("*.csv"))
            if not found:
                raise ManifestError(f"{path}: a folder without any manifest (*.csv)")
            expanded += found
        else:
            expanded.append(str(path))
    return expanded


def read_manifest(path: ManifestPath) -> pd.DataFrame:
    """Read and validate one manifest (see ``read_manifests``)."""
    return read_manifests([path])


def read_manifests(paths: Iterable[ManifestPath], content_store: str | PathLike | None = None) -> pd.DataFrame:
    """Read, validate and concatenate manifests, without opening any image.

    Path columns come back as absolute paths (relative ones are resolved against the
    manifest's folder); ``manifest`` (the CSV path as given) and ``row`` (1-based) are
    added, and ``session`` ("" when the CSV has none) is always present. Text columns hold
    str ("" when empty); ``age``/``pld``/``field_strength`` and any other column whose
    values are all numbers hold floats (NaN when empty). Raises
    ManifestError listing every structural problem: unreadable CSV, missing columns, empty
    required values, non-numeric numbers, duplicate subject/session rows, a subject in
    two studies or spelled two ways (``sub-01``, ``01``), or one CBF map in two rows (the same
    file, or a byte-identical copy; ``content_store`` keeps the content keys between runs).
    """
    frames, problems = _read_all(paths, content_store)
    if problems:
        raise ManifestError(_format(problems))
    return pd.concat(frames, ignore_index=True)


def check_manifests(
    paths: Sequence[ManifestPath],
    read_images: bool = True,
    progress: bool = False,
    notes: list[Problem] | None = None,
    workers: int | None = None,
) -> list[Problem]:
    """Every problem in these manifests, in manifest and row order; an empty list means usable.

    With ``read_images``, every CBF map goes through ``scans.load_cbf`` and every tissue map
    through ``scans.load_tissue_map`` (on the CBF grid); without it, files are only checked
    for existence. Each distinct set of a row's files is opened once, however many rows name it,
    in ``workers`` processes (default: one per CPU; 0 opens them in this process). ``progress``
    shows a tqdm bar over the maps on stderr. What a user should know about a usable map (NaN
    background read as 0, partial brain coverage) is appended to ``notes``.
    """
    frames, problems = _read_all(paths)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    records = rows.to_dict("records")
    files: dict[tuple[tuple[str, str], ...], list[dict]] = {}
    for record in records:
        files.setdefault(_row_files(record), []).append(record)
    found = _open_all(list(files), read_images, progress, os.cpu_count() or 1 if workers is None else workers)
    remarks: list[Problem] = []
    for key, (errors, file_notes) in found.items():
        for record in files[key]:
            problems += [_file_problem(record, file, message) for file, message in errors]
            remarks += [_file_problem(record, file, message) for file, message in file_notes]
    order = {p: i for i, p in enumerate(expand_manifests(paths))}

    def in_order(problem: Problem) -> tuple[int, int]:
        return order.get(problem.manifest, len(order)), problem.row or 0

    if notes is not None:
        notes += sorted(remarks, key=in_order)
        if len(rows):
            notes += _range_notes(rows)
    return sorted(problems, key=in_order)


def count_rows(paths: Sequence[ManifestPath]) -> int:
    """Data rows over all readable manifests (for the summary line of ``manifest check``)."""
    tables = (_read_table(path)[0] for path in expand_manifests(paths))
    return sum(len(table) for table in tables if table is not None)


def _read_all(
    paths: Iterable[ManifestPath], content_store: str | PathLike | None = None
) -> tuple[list[pd.DataFrame], list[Problem]]:
    frames, problems = [], []
    for path in expand_manifests(paths):
        frame, found = _read_table(path)
        problems += found
        if frame is not None:
            frames.append(frame)
    duplicates = _duplicate_problems(frames)
    flagged = {(problem.manifest, problem.row) for problem in duplicates}
    problems += duplicates + _same_scan_problems(frames, flagged, content_store)
    return frames, problems


def _read_table(path: ManifestPath) -> tuple[pd.DataFrame | None, list[Problem]]:
    """One manifest's table with its own problems; None when it cannot be used at all."""
    name = str(path)
    if _is_binary(path):
        return None, [Problem(name, None, None, "a binary file, not a CSV text table (save it as CSV, UTF-8)")]
    try:
        # utf-8-sig: spreadsheets often save a byte-order mark that would hide the first column name
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except FileNotFoundError:
        return None, [Problem(name, None, None, "manifest not found")]
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        return None, [Problem(name, None, None, f"unreadable CSV ({str(error).strip()})")]
    table.columns = [str(column).strip() for column in table.columns]
    table = table.apply(lambda column: column.str.strip())
    optional = [column for column in table.columns if column not in REQUIRED_COLUMNS]
    table[optional] = table[optional].mask(table[optional].isin(MISSING_MARKERS), "")

    problems = []
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        problems.append(
            Problem(
                name, None, None, f"missing required column(s) {', '.join(missing)} (has: {', '.join(table.columns)})"
            )
        )
    taken = [column for column in ADDED_COLUMNS if column in table.columns]
    if taken:
        problems.append(
            Problem(name, None, None, f"column(s) {', '.join(taken)} are reserved (added when reading); rename them")
        )
    header = _header(path)  # as written: pandas renames a repeated column ("session.1")
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        problems.append(Problem(name, None, None, f"repeated column(s) {', '.join(repeated)}"))
    if len(table) == 0:
        problems.append(Problem(name, None, None, "no rows"))
    if problems:
        return None, problems

    table.insert(0, "row", range(1, len(table) + 1))
    table.insert(0, "manifest", name)
    for column in REQUIRED_COLUMNS:
        for index in table.index[table[column] == ""]:
            problems.append(_row_problem(table.loc[index], f"empty {column}"))
    problems += _convert_numbers(table)
    folder = Path(path).parent
    for column in PATH_COLUMNS:
        if column in table.columns:
            table[column] = [_resolve(folder, value) for value in table[column]]
    if "session" not in table.columns:
        table["session"] = ""
    return table, problems


def _is_binary(path: ManifestPath) -> bool:
    """A NUL byte in the first 8 KiB: a spreadsheet, a compressed or a UTF-16 file, not a CSV table."""
    try:
        with open(path, "rb") as stream:
            return b"\0" in stream.read(8192)
    except OSError:
        return False  # missing or unreadable: pandas says which


def _header(path: ManifestPath) -> list[str]:
    """The column names of a CSV's first line, stripped."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [name.strip() for name in next(csv.reader(handle, skipinitialspace=True), [])]


def _convert_numbers(table: pd.DataFrame) -> list[Problem]:
    """Turn numeric columns into floats in place; report non-numbers in the known numeric ones."""
    problems = []
    for column in table.columns:
        if column in TEXT_COLUMNS or column in ADDED_COLUMNS:
            continue
        values = pd.to_numeric(table[column].where(table[column] != ""), errors="coerce")
        bad = table[column].ne("") & values.isna()
        if column in NUMERIC_COLUMNS:
            for index in table.index[bad]:
                problems.append(_row_problem(table.loc[index], f"{column} {table.at[index, column]!r} is not a number"))
            table[column] = values.astype(float)
        elif not bad.any() and table[column].ne("").any():
            table[column] = values.astype(float)
    return problems


def _duplicate_problems(frames: list[pd.DataFrame]) -> list[Problem]:
    """Rows with the same subject and session, subjects in two studies, and one subject spelled two ways."""
    if not frames:
        return []
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[(rows["subject"] != "") & (rows["study"] != "")]
    problems = []
    first_study: dict[str, pd.Series] = {}
    first_scan: dict[tuple[str, str, str], pd.Series] = {}
    first_spelling: dict[str, pd.Series] = {}
    for _, row in rows.iterrows():
        subject, study, session = row["subject"], row["study"], row["session"]
        # BIDS writes subject 01 as sub-01: both spellings in one dataset are one person under two labels
        earlier = first_spelling.setdefault(subject.removeprefix("sub-"), row)
        if earlier["subject"] != subject:
            problems.append(
                _row_problem(
                    row,
                    f"subject {subject!r} is written {earlier['subject']!r} in {_where(earlier, row)}; "
                    "one person needs one label (sub-X is subject X)",
                )
            )
            continue
        earlier = first_study.setdefault(subject, row)
        if earlier["study"] != study:
            problems.append(
                _row_problem(
                    row,
                    (
                        f"subject {subject!r} is also in study {earlier['study']!r} ({_where(earlier, row)}); "
                        "subject labels must be unique across studies (prefix them with the study)"
                    ),
                )
            )
            continue
        earlier = first_scan.setdefault((study, subject, session), row)
        if earlier is not row:
            scan = f"subject {subject!r}" + (f" session {session!r}" if session else "")
            problems.append(_row_problem(row, f"duplicate of {_where(earlier, row)} ({scan})"))
    return problems


def _same_scan_problems(
    frames: list[pd.DataFrame], flagged: set[tuple[str, int | None]], content_store: str | PathLike | None = None
) -> list[Problem]:
    """Rows whose CBF map is another row's: the same file however spelled, or a byte-identical copy.

    A row already refused as a duplicate of another (``flagged``: (manifest, row)) gets no second problem.
    """
    if not frames:
        return []
    rows = pd.concat(frames, ignore_index=True)
    problems = []
    for index, (earlier, how) in sorted(same_scans(rows["path"].tolist(), content_store).items()):
        row, first = rows.loc[index], rows.loc[earlier]
        if (row["manifest"], int(row["row"])) in flagged:
            continue
        scan = f"subject {first['subject']!r}" + (f" session {first['session']!r}" if first["session"] else "")
        problems.append(
            _row_problem(
                row,
                f"same CBF map as {_where(first, row)} ({scan}): {how}; one scan belongs in one row, "
                "else a split can put it in train and test",
            )
        )
    return problems


def _range_notes(rows: pd.DataFrame) -> list[Problem]:
    """Numbers outside a plausible range (PLD in ms, age in months, ...): noted, since they may be right."""
    notes = []
    for column, (low, high, unit) in PLAUSIBLE_RANGES.items():
        if column not in rows.columns or not pd.api.types.is_numeric_dtype(rows[column]):
            continue
        for index in rows.index[(rows[column] < low) | (rows[column] > high)]:
            value = rows.at[index, column]
            notes.append(_row_problem(rows.loc[index], f"{column} {value:g} is outside {low:g}-{high:g} {unit}"))
    return notes


def _row_files(record: dict) -> tuple[tuple[str, str], ...]:
    """(column, path) of each file a row names: the CBF map first, then its tissue maps."""
    return tuple((column, record[column]) for column in PATH_COLUMNS if record.get(column))


def _open_all(
    keys: list[tuple[tuple[str, str], ...]], read_images: bool, progress: bool, workers: int
) -> dict[tuple[tuple[str, str], ...], tuple[list, list]]:
    """``_check_files`` of every key, in a pool of single-threaded processes when there are enough."""
    bar = tqdm(total=len(keys), desc="checking scans", unit="scan", disable=not progress or not keys)
    results = {}
    if workers > 0 and read_images and len(keys) >= MIN_MAPS_FOR_WORKERS:
        context = get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(
            min(workers, len(keys)), mp_context=context, initializer=single_threaded, initargs=(os.getpid(),)
        ) as pool:
            futures = {pool.submit(_check_files, key, read_images): key for key in keys}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    else:
        for key in keys:
            results[key] = _check_files(key, read_images)
            bar.update()
    bar.close()
    return results


def _check_files(files: tuple[tuple[str, str], ...], read_images: bool) -> tuple[list, list]:
    """([(file, problem)], [(file, note)]) for the files of one row: missing, unreadable, or not a usable map."""
    problems, notes = [], []
    cbf = None
    for column, value in files:
        prefix = "" if column == "path" else f"{column} map: "
        try:
            if not Path(value).is_file():
                raise ScanError(f"file not found: {value}")
            if not read_images:
                continue
            if column == "path":
                found: list[str] = []
                cbf = load_cbf(value, notes=found)
                coverage = brain_coverage(cbf)
                if coverage.partial:
                    found.append(f"partial coverage: {coverage.describe()}")
                notes += [(value, note) for note in found]
            else:
                load_tissue_map(value, reference=cbf)
        except ScanError as error:
            problems.append((value, prefix + str(error)))
    return problems, notes


def _file_problem(record: dict, file: str, message: str) -> Problem:
    return Problem(record["manifest"], record["row"], Path(file).name, message)


def _row_problem(row: pd.Series, message: str) -> Problem:
    file = Path(row["path"]).name if row.get("path") else None
    return Problem(row["manifest"], int(row["row"]), file, message)


def _where(earlier: pd.Series, row: pd.Series) -> str:
    if earlier["manifest"] == row["manifest"]:
        return f"row {earlier['row']}"
    return f"{earlier['manifest']} row {earlier['row']}"


def _resolve(folder: Path, value: str) -> str:
    """Absolute path for a manifest entry: relative entries are relative to the manifest's folder."""
    if not value:
        return ""
    path = Path(value).expanduser()
    return os.path.abspath(path if path.is_absolute() else folder / path)


def _format(problems: list[Problem]) -> str:
    """One problem in one line (it names its manifest and row); several under a count."""
    if len(problems) == 1:
        return str(problems[0])
    count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
    return f"{count} in manifests:\n" + "\n".join(f"  {problem}" for problem in problems)
