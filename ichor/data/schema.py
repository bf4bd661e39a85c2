"""The data contract: a manifest's columns, the columns that name a scan, which rows are labelled, label strata.

Every reader and writer of manifests takes its facts from here: ``read_manifests`` checks
and types the columns, ``ichor synth`` and ``ichor manifest build`` write them in
:func:`manifest_columns` order, predictions and feature tables start with ``ID_COLUMNS``,
and the datamodule's split and the cross-validation folds select the labelled rows and
stratify a label the same way (:func:`labelled_rows`, :func:`label_strata`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd


@dataclass(frozen=True)
class Column:
    """A manifest column ICHOR knows: how its values are read, whether every row needs one, and what they mean.

    ``kind``: "text" stays text even when it looks like a number (subject "001"); "number" must be
    a number (empty is allowed); "path" is a file, relative to the manifest's folder unless absolute.
    ``plausible``: for numbers, the (low, high, unit) outside which ``manifest check`` notes a value.
    """

    name: str
    kind: Literal["text", "number", "path"]
    meaning: str
    required: bool = False
    plausible: tuple[float, float, str] | None = None


# In the order manifests are written; any other column is a label (diagnosis, rating, ...), written after these.
COLUMNS = (
    Column("subject", "text", "participant label, unique across studies (prefix it with the study)", required=True),
    Column("session", "text", "session or visit; (subject, session) is unique"),
    Column("path", "path", "the CBF map: a 3D NIfTI in mL/100 g/min", required=True),
    Column("study", "text", "study name", required=True),
    Column("site", "text", "acquisition site"),
    Column("vendor", "text", "scanner manufacturer"),
    Column("asl_type", "text", "labelling: PCASL, PASL or CASL"),
    Column("readout", "text", "readout, e.g. 2D EPI, 3D GRASE, 3D spiral"),
    Column("field_strength", "number", "tesla", plausible=(0.1, 11.7, "tesla")),
    Column(
        "pld",
        "number",
        "post-labelling delay in seconds",
        plausible=(0.1, 5.0, "seconds (post-labelling delay in ms?)"),
    ),
    Column("age", "number", "years", plausible=(0.0, 120.0, "years (age in months or days?)")),
    Column("sex", "text", "as recorded"),
    Column("gm", "path", "grey-matter probability map on the CBF map's grid (for QEI)"),
    Column("wm", "path", "white-matter probability map on the CBF map's grid"),
    Column("csf", "path", "CSF probability map on the CBF map's grid"),
)
COLUMN_NAMES = tuple(column.name for column in COLUMNS)
REQUIRED_COLUMNS = tuple(column.name for column in COLUMNS if column.required)
PATH_COLUMNS = tuple(column.name for column in COLUMNS if column.kind == "path")
NUMERIC_COLUMNS = tuple(column.name for column in COLUMNS if column.kind == "number")
TEXT_COLUMNS = tuple(column.name for column in COLUMNS if column.kind != "number")
TISSUE_COLUMNS = ("gm", "wm", "csf")
PLAUSIBLE_RANGES = {column.name: column.plausible for column in COLUMNS if column.plausible is not None}
# Columns read_manifests adds; a CSV that already has them would be ambiguous.
ADDED_COLUMNS = ("manifest", "row")

# The columns that name a scan in every table ICHOR writes per scan (features, QEI, predictions).
ID_COLUMNS = ("subject", "session", "study", "path")
# The split a run gave a scan: train, val, test, or unlabelled (see ichor.data.splits).
SPLIT_COLUMN = "split"

# A numeric label with more distinct values than this is stratified by quantile instead of value ...
MAX_NUMERIC_STRATA = 10
# ... into this many quantiles (quartiles).
NUMERIC_QUANTILES = 4
MISSING_STRATUM = "<missing>"


def manifest_columns(columns: Iterable[str]) -> list[str]:
    """``columns`` in the order manifests are written: the known ones in ``COLUMNS`` order, then the rest as given."""
    columns = list(dict.fromkeys(columns))
    return [name for name in COLUMN_NAMES if name in columns] + [name for name in columns if name not in COLUMN_NAMES]


def labelled_rows(rows: pd.DataFrame, target: str, values: Sequence | None = None) -> pd.Series:
    """True where ``target`` has a value (and, with ``values``, one of them), indexed like ``rows``.

    Missing and blank values are unlabelled; ``values`` compare as text, so ``[1, 2]`` and
    ``["1", "2"]`` keep the same rows of a text column.
    """
    if target not in rows.columns:
        manifests = f" ({', '.join(sorted(set(map(str, rows['manifest']))))})" if "manifest" in rows.columns else ""
        raise ValueError(
            f"target column {target!r} is not in the manifests{manifests}; columns: {', '.join(map(str, rows.columns))}"
        )
    column = rows[target]
    labelled = column.notna() & (column.astype(str).str.strip() != "")
    if values is not None:
        labelled &= column.astype(str).isin([str(v) for v in values])
    return labelled


def label_strata(labels: pd.Series) -> pd.Series:
    """The stratum name of each label: its value, or for a many-valued number its quartile; missing is its own.

    The one stratification of ICHOR: the datamodule's split and the cross-validation folds use it.
    """
    missing = labels.isna() | (labels.astype(str) == "")
    if pd.api.types.is_numeric_dtype(labels) and labels.nunique() > MAX_NUMERIC_STRATA:
        labels = pd.qcut(labels, NUMERIC_QUANTILES, duplicates="drop")
    return labels.astype(str).mask(missing, MISSING_STRATUM)
