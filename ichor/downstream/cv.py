"""Cross-validation of a downstream config: folds grouped by subject, stratified by the target.

All scans of a subject fall in one fold (a model must never be tested on a brain it trained on); each fold
is the test set once, a stratified, subject-grouped part of the rest validates, and ``by_study`` holds out
each study in turn. A fold reaches the datamodule as a ``subject,split`` CSV (``data.init_args.split_file``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ichor.data.schema import TISSUE_COLUMNS, label_strata, labelled_rows
from ichor.io import write_csv, write_text

if TYPE_CHECKING:
    from ichor.training.runs import Run

log = logging.getLogger(__name__)

SPLIT_FILE = "split_file.csv"
QEI_METRIC = "test/qei_pearson"


@dataclass
class Fold:
    """One fold: its name and the split of every labelled subject (columns subject, split)."""

    name: str
    splits: pd.DataFrame

    def count(self, split: str) -> int:
        return int((self.splits["split"] == split).sum())

    def counts(self) -> dict[str, int]:
        """Subjects per split as result columns: n_train, n_val, n_test."""
        return {f"n_{split}": self.count(split) for split in ("train", "val", "test")}


def _grouped_split(rows: pd.DataFrame, target: str, n_splits: int, seed: int):
    """Stratified, subject-grouped K-fold over scan rows: yields (rest, held) index arrays."""
    subjects = rows["subject"].nunique()
    if n_splits > subjects:
        raise ValueError(f"{n_splits} folds need at least {n_splits} labelled subjects, found {subjects}")
    largest = _largest_stratum(rows, target)
    if n_splits > largest:
        raise ValueError(
            f"{n_splits} folds need a target class with at least {n_splits} subjects; the largest has {largest}"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    strata = pd.factorize(label_strata(rows[target]))[0]  # the datamodule split's strata, coded in order of appearance
    return splitter.split(np.zeros(len(rows)), strata, groups=rows["subject"].to_numpy())


def _largest_stratum(rows: pd.DataFrame, target: str) -> int:
    """Subjects in the most populated target stratum (StratifiedGroupKFold's bound on folds)."""
    return int(rows.groupby(label_strata(rows[target]))["subject"].nunique().max())


def _fold(name: str, rows: pd.DataFrame, test: np.ndarray, target: str, val_fraction: float, seed: int) -> Fold:
    rest = rows.drop(index=rows.index[test])
    inner = max(2, min(round(1 / val_fraction), _largest_stratum(rest, target)))  # small data: a larger val share
    _, val = next(_grouped_split(rest.reset_index(drop=True), target, inner, seed))
    split = pd.Series("train", index=rows.index)
    split.iloc[test] = "test"
    split.loc[rest.index[val]] = "val"
    table = pd.DataFrame({"subject": rows["subject"], "split": split}).drop_duplicates("subject")
    return Fold(name, table.reset_index(drop=True))


def subject_folds(
    rows: pd.DataFrame, target: str, folds: int = 5, by_study: bool = False, val_fraction: float = 0.2, seed: int = 0
) -> list[Fold]:
    """The cross-validation folds of the labelled rows of ``rows`` (a read_manifests table)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labelled = labelled_rows(rows, target)
    if (~labelled).any():
        log.warning("cross-validation leaves out %d scan(s) without %r", int((~labelled).sum()), target)
    rows = rows.loc[labelled].reset_index(drop=True)
    if by_study:
        studies = sorted(rows["study"].unique())
        if len(studies) < 2:
            raise ValueError(f"holding out each study needs at least 2 studies, found {studies}")
        return [
            _fold(study, rows, np.flatnonzero(rows["study"] == study), target, val_fraction, seed) for study in studies
        ]
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    return [
        _fold(f"fold-{k + 1}", rows, test, target, val_fraction, seed)
        for k, (_, test) in enumerate(_grouped_split(rows, target, folds, seed))
    ]


class QEIBaseline:
    """Plain QEI of manifest rows and its Pearson r with the target over a fold's test rows.

    Each scan's QEI is computed once per run (cached by CBF path), however many folds test
    it; ``score`` all rows before training, so that a missing tissue map stops the run
    before any fold has been fitted.
    """

    def __init__(self, volume: int | str | None = None) -> None:
        self.volume = volume  # the datamodule's choice for 4D files
        self.qei: dict[str, float] = {}

    def score(self, rows: pd.DataFrame) -> None:
        for record in rows.to_dict("records"):
            if record["path"] not in self.qei:
                self.qei[record["path"]] = self._scan_qei(record)

    def _scan_qei(self, record: dict) -> float:
        from ichor.data.manifest import RowError, load_row
        from ichor.quality import QEIError, compute_qei

        cbf, maps = load_row(record, TISSUE_COLUMNS, self.volume, purpose="the QEI baseline")
        try:
            return compute_qei(cbf, *maps).qei
        except QEIError as error:
            raise RowError.at(record, str(error)) from error

    def pearson(self, rows: pd.DataFrame, target: str) -> float:
        """Pearson r of QEI and ``target`` over ``rows``; NaN (logged) where it is undefined."""
        self.score(rows)
        qei = np.array([self.qei[path] for path in rows["path"]])
        values = numeric_target(rows, target)
        if len(rows) < 3 or np.ptp(qei) == 0 or np.ptp(values) == 0:
            log.warning(
                "QEI baseline undefined on %d test scan(s): fewer than 3, or QEI or %r constant", len(rows), target
            )
            return float("nan")
        return float(np.corrcoef(qei, values)[0, 1])


def numeric_target(rows: pd.DataFrame, target: str) -> np.ndarray:
    """The target as numbers; a class label (e.g. "AD") is an error naming the manifest row."""
    values = pd.to_numeric(rows[target], errors="coerce")
    bad = rows.loc[values.isna()]
    if len(bad):
        first = bad.iloc[0]
        raise ValueError(
            f"the QEI baseline needs a numeric target; {first['manifest']} row {first['row']} "
            f"has {target}={first[target]!r}"
        )
    return values.to_numpy(float)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (over folds, ddof 1) and fold count of every ``test/`` metric."""
    metrics = [c for c in results.columns if c.startswith("test/")]
    table = results[metrics].agg(["mean", "std", "count"]).T.rename_axis("metric").reset_index()
    table["metric"] = table["metric"].str.removeprefix("test/")
    return table.astype({"count": int})


def markdown(results: pd.DataFrame, summary: pd.DataFrame) -> str:
    """The summary (mean +- std) and the per-fold table, as Markdown."""
    lines = ["| metric | mean ± std | folds |", "| --- | --- | --- |"]
    lines += [f"| {r.metric} | {r.mean:.4f} ± {r.std:.4f} | {r.count} |" for r in summary.itertuples()]
    columns = list(results.columns)
    lines += ["", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in results.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def fold_test_rows(rows: pd.DataFrame, fold: Fold) -> pd.DataFrame:
    """The rows of ``rows`` whose subject the fold tests."""
    tested = fold.splits.loc[fold.splits["split"] == "test", "subject"]
    return rows.loc[rows["subject"].isin(set(tested))]


def run_fold(run: Run, fold: Fold, out: Path) -> dict:
    """Fit ``run`` on the fold's train/val subjects, test the best checkpoint on its test subjects."""
    from ichor.training.runs import build_run

    fold_dir = out / fold.name
    split_file = write_csv(fold.splits, fold_dir / SPLIT_FILE)
    cli = build_run(run.override({"data": {"init_args": {"split_file": str(split_file)}}}), fold_dir)
    trainer = cli.trainer
    trainer.fit(cli.model, datamodule=cli.datamodule)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback is not None else ""
    tested = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, verbose=False)
    return {"fold": fold.name, **fold.counts(), **{k: float(v) for k, v in tested[0].items()}}


def cross_validate(
    run: Run,
    out: str | os.PathLike,
    folds: int = 5,
    by_study: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
    qei_baseline: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every fold of ``run``; write per-fold and summary tables to ``out``."""
    from ichor.data.manifest import read_manifests
    from ichor.training.runs import IchorCLI

    out = Path(out)
    base = IchorCLI(args=run, run=False)
    target = base.datamodule.hparams.target
    if target is None:
        raise ValueError("cross-validation needs the task's label column: set data.init_args.target")
    rows = read_manifests(base.datamodule.hparams.manifests)
    rows = rows.loc[labelled_rows(rows, target, base.datamodule.hparams.target_values)].reset_index(drop=True)
    plan = subject_folds(rows, target, folds, by_study, val_fraction, seed)
    baseline = None
    if qei_baseline:
        numeric_target(rows, target)
        baseline = QEIBaseline(base.datamodule.hparams.volume)
        baseline.score(rows)  # every scan's QEI up front: a bad row stops the run before any training
    results = []
    for fold in plan:
        result = run_fold(run, fold, out)
        if baseline is not None:
            result[QEI_METRIC] = baseline.pearson(fold_test_rows(rows, fold), target)
        results.append(result)
    results = pd.DataFrame(results)
    summary = summarise(results)
    write_csv(results, out / "cv_folds.csv")
    write_csv(summary, out / "cv_summary.csv")
    write_text(
        out / "cv_summary.md",
        f"# Cross-validation of {target!r} ({len(plan)} folds"
        f"{', by study' if by_study else ''})\n\n" + markdown(results, summary),
    )
    return results, summary
