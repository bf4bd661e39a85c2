"""Which adaptation mode (and which linear-probe features) stands for each method: chosen where it is fair.

A mode picked by its mean on the held-out studies is a result chosen on its own test set. The
benchmark therefore runs the same protocol (task, budgets, draws, folds) on a selection cohort
that is no benchmark cohort (``make probe-data``), and each method keeps, per task and budget,
the mode that scored best there. Only those modes enter the paired comparison; the table of every
mode stays, marked. Without a selection cohort a method keeps its first mode in the config's order
(declared before any result), never the best held-out one.
"""

from __future__ import annotations

import pandas as pd

from ichor.benchmark.config import BenchmarkConfig

LOWER_BETTER = {"mae", "rmse"}
CHOICE_KEYS = ["task", "method", "budget"]


def metric_column(cfg: BenchmarkConfig, task: str) -> str:
    """The per-fold column of a task's metric."""
    return f"test/{next(t.metric for t in cfg.tasks if t.name == task)}"


def chosen_modes(selection: pd.DataFrame, results: pd.DataFrame, cfg: BenchmarkConfig) -> pd.DataFrame:
    """Per (task, method, budget) of ``results``: the mode standing for the method, and where it was chosen.

    ``selection``: per-fold results on the selection cohort (empty: the declared order). ``results``
    only says which (task, method, budget) need a mode; its metric values are never read.
    """
    needed = results[[*CHOICE_KEYS, "mode"]].drop_duplicates()
    rows = []
    for key, group in needed.groupby(CHOICE_KEYS, sort=False):
        candidates = list(group["mode"])
        mode, score, where = declared_mode(candidates, cfg), float("nan"), "declared order"
        if not selection.empty:
            scored = selection_scores(selection, dict(zip(CHOICE_KEYS, key)), candidates, cfg)
            if not scored.empty:
                mode, score, where = scored.idxmax(), float(scored.max()), "selection cohort"
        rows.append(dict(zip(CHOICE_KEYS, key), mode=mode, selection_score=score, chosen_on=where))
    return pd.DataFrame(rows)


def selection_scores(selection: pd.DataFrame, key: dict, candidates: list[str], cfg: BenchmarkConfig) -> pd.Series:
    """Mean selection-cohort metric of each candidate mode (signed: higher is better)."""
    mask = (selection["task"] == key["task"]) & (selection["method"] == key["method"])
    mask &= (selection["budget"] == key["budget"]) & selection["mode"].isin(candidates)
    column = metric_column(cfg, key["task"])
    if column not in selection:
        return pd.Series(dtype=float)
    sign = -1.0 if column.removeprefix("test/") in LOWER_BETTER else 1.0
    return (sign * selection.loc[mask].groupby("mode")[column].mean()).dropna()


def declared_mode(candidates: list[str], cfg: BenchmarkConfig) -> str:
    """The first candidate in the config's order: probe candidates (as ``linear_probe``), then the modes."""
    order = [cfg.probe_mode(p) for p in cfg.probe] if "linear_probe" in cfg.modes else []
    order += [mode for mode in cfg.modes if mode != "linear_probe"]
    return min(candidates, key=lambda mode: order.index(mode) if mode in order else len(order))
