"""Subject-level train/val/test splits, stratified, deterministic, and written down for audit.

All scans of a subject go to one split, otherwise a model is validated on a brain it has
trained on. Held-out studies or sites go wholly to test (the site-generalisation question
the paper asks). The remaining subjects are stratified by study and, optionally, by a label
column: they are ordered by stratum (shuffled by ``seed`` inside each) and every k-th one
is taken (systematic sampling), so each stratum gets its share and the overall counts are
the rounded fractions, even with strata of a few subjects.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ichor.data.schema import label_strata
from ichor.io import write_csv

SPLITS = ("train", "val", "test")
UNLABELLED = "unlabelled"  # rows without a usable target: predicted, never trained or scored
UNLISTED = "unlisted"  # rows whose subject a split file does not list
SPLIT_COLUMNS = ("subject", "session", "study", "site", "split", "manifest", "row", "path")


def assign_splits(
    rows: pd.DataFrame,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    test_studies: Sequence[str] | None = None,
    test_sites: Sequence[str] | None = None,
    stratify_by: str | None = None,
) -> pd.Series:
    """The split ("train", "val" or "test") of every row, indexed like ``rows`` (defaults: the datamodule's)."""
    if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be >= 0 and sum below 1")
    _check_known(rows, "study", test_studies)
    _check_known(rows, "site", test_sites)
    if stratify_by is not None and stratify_by not in rows.columns:
        raise ValueError(
            f"stratify_by column {stratify_by!r} is not in the manifests (columns: {', '.join(rows.columns)})"
        )

    held_out = rows["study"].isin(test_studies or [])
    if test_sites:
        held_out |= rows["site"].isin(test_sites)
    held_subjects = set(rows.loc[held_out, "subject"])

    subjects = rows.drop_duplicates("subject").set_index("subject")
    subjects = subjects[~subjects.index.isin(held_subjects)]
    strata = subjects["study"].astype(str)
    if stratify_by is not None:
        strata = strata + "|" + label_strata(subjects[stratify_by])
    rng = np.random.default_rng(seed)
    order = pd.DataFrame({"stratum": strata.to_numpy(), "draw": rng.random(len(strata))}, index=subjects.index)
    ordered = order.sort_values(["stratum", "draw"]).index

    split_of = dict.fromkeys(held_subjects, "test")
    is_test = _systematic(len(ordered), test_fraction)
    remaining = [subject for subject, test in zip(ordered, is_test) if not test]
    is_val = _systematic(len(remaining), val_fraction / (1 - test_fraction))
    split_of.update({subject: "test" for subject, test in zip(ordered, is_test) if test})
    split_of.update({subject: "val" if val else "train" for subject, val in zip(remaining, is_val)})
    return rows["subject"].map(split_of).rename("split")


def read_split_file(path: str | os.PathLike, subjects: pd.Series) -> pd.Series:
    """The split of each of ``subjects`` from a ``subject,split`` CSV; unlisted subjects get ``UNLISTED``."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"subject", "split"} - set(table.columns)
    if missing:
        raise ValueError(f"split file {path}: missing column(s) {', '.join(sorted(missing))}")
    bad = table.loc[~table["split"].isin(SPLITS)]
    if len(bad):
        row = bad.index[0] + 1
        raise ValueError(
            f"split file {path} row {row}: split {bad['split'].iloc[0]!r} is not one of {', '.join(SPLITS)}"
        )
    duplicated = table.loc[table["subject"].duplicated(), "subject"]
    if len(duplicated):
        raise ValueError(f"split file {path}: subject {duplicated.iloc[0]!r} is listed twice")
    return subjects.map(table.set_index("subject")["split"]).fillna(UNLISTED)


def write_splits(rows: pd.DataFrame, splits: pd.Series, path: str | os.PathLike) -> Path:
    """Write one line per scan (subject, session, study, site, split, manifest, row, path) atomically."""
    table = rows.assign(split=splits)
    table = table[[column for column in SPLIT_COLUMNS if column in table.columns]]
    return write_csv(table, path)


def _systematic(count: int, fraction: float) -> list[bool]:
    """Every (1/fraction)-th position, centred: round(count * fraction) positions in all."""
    positions = np.arange(count)
    return list(np.floor((positions + 1) * fraction + 0.5) > np.floor(positions * fraction + 0.5))


def _check_known(rows: pd.DataFrame, column: str, values: Sequence[str] | None) -> None:
    """Held-out names must exist: a typo would silently hold out nothing."""
    if not values:
        return
    present = set(rows[column]) if column in rows.columns else set()
    unknown = [value for value in values if value not in present]
    if unknown:
        raise ValueError(
            f"test_{column}s {unknown} not found in the manifests' {column!r} column (has: {sorted(present)})"
        )
