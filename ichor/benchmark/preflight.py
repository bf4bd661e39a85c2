"""Every check of a benchmark that needs no encoder, run before anything is pre-trained.

A misspelt target found after an hour of pre-training costs the hour; so the tasks are read and
checked first, each failure one line naming the task, the cohort and the manifest row:

- the target column is in the task's manifests, and each of its ``target_values`` matches a label;
- a classification task has at least two classes, and its folds can be planned;
- the pre-training pool and every labelled cohort (the benchmark's and the selection cohort) share no
  subject and no scan (the same file, or a byte-identical copy under another name), and the selection
  cohort shares none with the benchmark's cohorts: the paper's regime measures transfer, not memory;
- a label budget of N subjects per class larger than a fold's training subjects of a class cannot be
  met: the fold trains on all of them, a warning names the task, budget, fold and class, and the fold's
  results say ``budget_met: False`` (never reported as met).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ichor.benchmark.config import BenchmarkConfig, TaskSpec
from ichor.data.schema import label_strata, labelled_rows

if TYPE_CHECKING:
    from ichor.downstream.cv import Fold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rows:
    """Manifest rows of one side of a leak check (the pool, a cohort), and the cache's content store."""

    name: str
    rows: pd.DataFrame
    store: Path | None = None


def check_before_pretraining(cfg: BenchmarkConfig, cohorts: list) -> None:
    """Run every check above; raises ValueError with the first failure, in one line."""
    from ichor.benchmark.pretraining import pretrain_run

    pools = [
        _config_rows(f"the {method} pre-training pool", pretrain_run(spec, cfg))
        for method, spec in cfg.pretrain.items()
    ]
    labelled: dict[str, Rows] = {}
    for task in cfg.tasks:
        for cohort in cohorts:
            rows = task_rows(task, cfg, cohort)
            name = f"task {task.name} ({cohort.name} cohort)"
            for pool in pools:
                check_no_leak(pool, Rows(name, rows.rows, rows.store))
            check_budgets(cfg, task, rows.rows, name)
            labelled.setdefault(cohort.name, Rows(f"the {cohort.name} cohort", rows.rows, rows.store))
    if "selection" in labelled and "held_out" in labelled:
        check_no_leak(labelled["selection"], labelled["held_out"])


def task_rows(task: TaskSpec, cfg: BenchmarkConfig, cohort) -> Rows:
    """The task's labelled rows on ``cohort``, its target and ``target_values`` checked (see the module docstring)."""
    from ichor.benchmark.run import task_run

    where = f"task {task.name} ({cohort.name} cohort)"
    found = _config_rows(where, task_run(task, "finetune", Path("encoder"), cfg, cohort.overrides))
    rows = found.rows
    try:
        labelled = labelled_rows(rows, task.target)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    values = sorted(set(rows.loc[labelled, task.target].astype(str)))
    if not labelled.any():
        raise ValueError(f"{where}: no row of {_manifests(rows)} has a value of {task.target!r}")
    if task.target_values is not None:
        unmatched = [str(v) for v in task.target_values if str(v) not in values]
        if unmatched:
            raise ValueError(
                f"{where}: target_values {', '.join(unmatched)} match no {task.target!r} in {_manifests(rows)} "
                f"(values there: {', '.join(values[:10])})"
            )
        labelled &= labelled_rows(rows, task.target, task.target_values)
    rows = rows.loc[labelled].reset_index(drop=True)
    if task.is_classification and rows[task.target].astype(str).nunique() < 2:
        raise ValueError(f"{where}: a classification needs two classes of {task.target!r}, found {values}")
    return Rows(where, rows, found.store)


def check_no_leak(pool: Rows, cohort: Rows) -> None:
    """Refuse when ``pool`` and ``cohort`` share a subject or a scan, naming the first shared one's rows."""
    from ichor.data.identity import same_scans

    shared = pool.rows.loc[pool.rows["subject"].astype(str).isin(set(cohort.rows["subject"].astype(str)))]
    if len(shared):
        first = shared.iloc[0]
        other = cohort.rows.loc[cohort.rows["subject"].astype(str) == str(first["subject"])].iloc[0]
        raise ValueError(
            f"{cohort.name}: {shared['subject'].nunique()} subject(s) are also in {pool.name} "
            f"(first: {first['subject']}, {_row(first)} and {_row(other)}); use other people in each, "
            "or the benchmark measures memory, not transfer"
        )
    paths = list(pool.rows["path"]) + list(cohort.rows["path"])
    for later, (earlier, how) in same_scans(paths, pool.store).items():
        if earlier < len(pool.rows) <= later:
            raise ValueError(
                f"{cohort.name}: {_row(cohort.rows.iloc[later - len(pool.rows)])} is {how} of "
                f"{_row(pool.rows.iloc[earlier])} in {pool.name}; a scan is in one of them only"
            )


def check_budgets(cfg: BenchmarkConfig, task: TaskSpec, rows: pd.DataFrame, where: str) -> None:
    """Plan the folds (so that a cohort too small for them fails now) and warn of each budget a fold cannot meet."""
    from ichor.benchmark.run import plan

    try:
        folds = plan(cfg, task, rows, cfg.seeds[0])
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    for budget, planned in folds.items():
        for fold in planned:
            short = unmet_budget(fold, rows, task.target, budget)
            if short:
                log.warning(
                    "benchmark: %s: budget %g per class is more than fold %s has of %s; "
                    "that fold trains on all of them (budget_met: False in its results)",
                    where,
                    budget,
                    fold.name,
                    short,
                )


def unmet_budget(fold: Fold, rows: pd.DataFrame, target: str, budget: float) -> str:
    """The classes (strata) with fewer training subjects than a whole-number ``budget`` (e.g. "AD (7)"); "" if met."""
    if budget <= 1:
        return ""
    train = fold.splits.loc[fold.splits["split"] == "train", "subject"]
    labels = rows.drop_duplicates("subject").set_index("subject")[target]
    counts = label_strata(labels.loc[train]).value_counts()
    return ", ".join(f"{name} ({count})" for name, count in counts.items() if count < budget)


def _config_rows(where: str, run) -> Rows:
    from ichor.data.manifest import ManifestError, read_manifests
    from ichor.training.runs import parse_run

    data = parse_run(run).data.init_args
    store = Path(data.cache_dir) / "content-keys" if data.get("cache_dir") else None
    try:
        return Rows(where, read_manifests(data.manifests, content_store=store), store)
    except (ManifestError, OSError) as error:
        raise ValueError(f"{where}: {error}") from None


def _manifests(rows: pd.DataFrame) -> str:
    return ", ".join(sorted(set(map(str, rows["manifest"]))))


def _row(row: pd.Series) -> str:
    return f"{row['manifest']} row {row['row']} ({row['subject']}, {row['path']})"
