"""The benchmark's outputs: per-fold CSV, summary CSV + Markdown, paired intervals, one figure per task.

The summary has one row per (task, method, mode, budget): the task's chosen metric as
``metric``/``mean``/``std`` over held-out studies and draws, every test metric as
``<name>_mean``/``<name>_std``, ``gap_closed`` (the share of the floor-to-ceiling gap the row closes:
(row - regional mean) / (oracle - regional mean)) and ``chosen`` (the mode the selection cohort
chose for the method at that task and budget, see :mod:`ichor.benchmark.choice`). The paired table
compares the reference method's chosen mode with every other method's chosen mode on shared
(held-out study, draw) pairs: the mean difference and its 95 % bootstrap interval over studies and
draws; "wins" only when the interval excludes 0. The figures are label-efficiency curves of the
chosen modes, the floor and the ceiling, with the same intervals as bands.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ichor.benchmark.choice import LOWER_BETTER, chosen_modes, metric_column
from ichor.benchmark.config import TRAINED_MODES, BenchmarkConfig
from ichor.benchmark.intervals import bootstrap_interval, verdict
from ichor.downstream.cv import summarise
from ichor.io import atomic_path, write_csv, write_text

KEYS = ["task", "method", "mode", "budget"]
FLOOR, CEILING = ("regional_mean", "baseline"), ("oracle", "oracle")
# A ceiling below these (at all labels) cannot tell encoders apart: the report flags the task.
CEILING_GOAL = {"auroc": 0.75, "pearson": 0.5, "spearman": 0.5}


@dataclass
class Outcome:
    """One compute rule's results: per-fold rows on the held-out cohorts, on the selection cohort and on
    pooled folds, and the pre-training records (one row per method)."""

    results: pd.DataFrame
    selection: pd.DataFrame
    pooled: pd.DataFrame
    pretraining: pd.DataFrame


SITE_GAP = 0.05  # the site-robustness goal: a held-out study scores within this of pooled folds
CHANCE = {"auroc": 0.5, "pearson": 0.0, "spearman": 0.0, "r2": 0.0}  # balanced accuracy's depends on the classes


def summary_table(results: pd.DataFrame, cfg: BenchmarkConfig) -> pd.DataFrame:
    """One row per (task, method, mode, budget), in run order."""
    primary = {task.name: task.metric for task in cfg.tasks}
    rows = []
    for key, group in results.groupby(KEYS, sort=False):
        stats = summarise(group.dropna(axis=1, how="all")).set_index("metric")
        row = dict(zip(KEYS, key), n_train=float(group["n_train"].mean()), folds=len(group))
        metric = primary[row["task"]]
        row.update(
            metric=metric, mean=stats["mean"].get(metric, float("nan")), std=stats["std"].get(metric, float("nan"))
        )
        for name, values in stats.iterrows():
            row[f"{name}_mean"], row[f"{name}_std"] = values["mean"], values["std"]
        rows.append(row)
    return pd.DataFrame(rows)


def budget_order(budgets: pd.Series) -> list[float]:
    """Fewest labels first: subjects per class, then fractions of the training labels."""
    return sorted(budgets.unique(), key=lambda b: (b <= 1, b))


def budget_label(budget: float) -> str:
    """``10 per class`` for a subject count, ``25 % of labels`` / ``all labels`` for a fraction."""
    if budget > 1:
        return f"{budget:g} per class"
    return "all labels" if budget == 1 else f"{budget * 100:g} % of labels"


def with_gap_closed(summary: pd.DataFrame) -> pd.DataFrame:
    """``gap_closed``: (row - floor) / (ceiling - floor) at the row's task and budget (NaN without both)."""
    index = pd.MultiIndex.from_frame(summary[["task", "budget"]])

    def level(model: tuple[str, str]) -> pd.Series:
        rows = summary[(summary["method"] == model[0]) & (summary["mode"] == model[1])]
        return rows.set_index(["task", "budget"])["mean"].reindex(index).to_numpy()

    floor, ceiling = level(FLOOR), level(CEILING)
    return summary.assign(gap_closed=(summary["mean"].to_numpy() - floor) / (ceiling - floor))


def with_chosen(summary: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """``chosen``: whether the row's mode is the one chosen for its method, task and budget."""
    picks = chosen.set_index(["task", "method", "budget"])["mode"]
    keys = list(zip(summary["task"], summary["method"], summary["budget"]))
    return summary.assign(chosen=[picks.get(key) == mode for key, mode in zip(keys, summary["mode"])])


def paired_differences(results: pd.DataFrame, chosen: pd.DataFrame, cfg: BenchmarkConfig) -> pd.DataFrame:
    """The reference's chosen mode minus every other method's chosen mode, per task and budget, on shared
    (held-out study, draw) pairs, with the 95 % bootstrap interval over studies and draws (> 0: better)."""
    picks = chosen.set_index(["task", "method", "budget"])["mode"]
    rows = []
    for (task, budget), group in results.groupby(["task", "budget"], sort=False):
        column = metric_column(cfg, task)
        if column not in group or (task, cfg.reference, budget) not in picks.index:
            continue
        scores = group.pivot_table(index=["fold", "seed"], columns=["method", "mode"], values=column)
        sign = -1.0 if column.removeprefix("test/") in LOWER_BETTER else 1.0
        ours = (cfg.reference, picks[task, cfg.reference, budget])
        for method in group["method"].unique():
            other = (method, picks.get((task, method, budget)))
            if method == cfg.reference or other not in scores.columns:
                continue
            diff = sign * (scores[ours] - scores[other]).dropna()
            low, high = bootstrap_interval(diff, cfg.seed)
            rows.append(
                dict(
                    task=task,
                    budget=budget,
                    reference=f"{ours[0]} ({ours[1]})",
                    versus=f"{other[0]} ({other[1]})",
                    metric=column.removeprefix("test/"),
                    difference=float(diff.mean()),
                    low=low,
                    high=high,
                    pairs=len(diff),
                    verdict=verdict(low, high),
                )
            )
    return pd.DataFrame(rows)


def paired_markdown(paired: pd.DataFrame) -> str:
    """Per task and budget: the reference's paired difference against each other method (better is > 0)."""
    if paired.empty:
        return ""
    lines = [
        "## Paired differences (chosen modes; reference minus other on the same held-out studies and draws;"
        " > 0 is better; 95 % interval by bootstrap over studies and draws; wins only when it excludes 0)",
        "",
        "| task | budget | reference | versus | difference [95 % interval] | pairs | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r.task} | {budget_label(r.budget)} | {r.reference} | {r.versus} | {r.difference:+.3f} "
        f"[{r.low:+.3f}, {r.high:+.3f}] | {r.pairs} | {r.verdict} |"
        for r in paired.itertuples()
    ]
    return "\n".join(lines) + "\n"


def markdown(summary: pd.DataFrame, folds: str = "folds", title: str = "# ICHOR benchmark") -> str:
    """Per task: rows method/mode, columns label budgets, cells mean ± std (over ``folds``) of the task's
    metric, the share of the floor-to-ceiling gap closed, and * on the mode chosen on the selection cohort."""
    lines = [title, "", "Every mode is listed; * marks the mode chosen for the method (on the selection cohort)."]
    lines += ["(gap x): share of the regional-mean-to-oracle gap closed.", ""]
    for task, table in summary.groupby("task", sort=False):
        metric, budgets = table["metric"].iloc[0], budget_order(table["budget"])
        lines += [
            f"## {task} ({metric}, mean ± std over {folds})",
            "",
            "| method | mode | " + " | ".join(budget_label(b) for b in budgets) + " |",
            "| --- | --- |" + " --- |" * len(budgets),
        ]
        for (method, mode), runs in table.groupby(["method", "mode"], sort=False):
            cells = runs.set_index("budget")
            lines.append(f"| {method} | {mode} | " + " | ".join(_score(cells, b) for b in budgets) + " |")
        lines.append("")
    return "\n".join(lines)


def _score(cells: pd.DataFrame, budget: float) -> str:
    if budget not in cells.index:
        return ""
    row = cells.loc[budget]
    gap = "" if pd.isna(row.get("gap_closed", float("nan"))) else f" (gap {row['gap_closed']:.2f})"
    return f"{row['mean']:.3f} ± {row['std']:.3f}{gap}{' *' if row.get('chosen', False) else ''}"


def ceiling_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per task at all labels (its largest budget): the floor, the ceiling, and whether the ceiling is too low
    to tell encoders apart (below :data:`CEILING_GOAL`)."""
    rows = []
    for task, table in summary.groupby("task", sort=False):
        most = table[table["budget"] == budget_order(table["budget"])[-1]]
        level = {
            name: most.loc[(most["method"] == model[0]) & (most["mode"] == model[1]), "mean"]
            for name, model in (("floor", FLOOR), ("ceiling", CEILING))
        }
        ceiling = float(level["ceiling"].iloc[0]) if len(level["ceiling"]) else float("nan")
        goal = CEILING_GOAL.get(table["metric"].iloc[0])
        rows.append(
            dict(
                task=task,
                metric=table["metric"].iloc[0],
                budget=most["budget"].iloc[0],
                floor=float(level["floor"].iloc[0]) if len(level["floor"]) else float("nan"),
                ceiling=ceiling,
                goal=goal,
                flagged=goal is not None and not ceiling >= goal,
            )
        )
    return pd.DataFrame(rows)


def ceiling_markdown(table: pd.DataFrame) -> str:
    """The floor and ceiling of every task, flagging a ceiling too low to tell methods apart."""
    if table.empty or table["ceiling"].isna().all():
        return ""
    lines = [
        "## Floor and ceiling (regional mean CBF and the oracle features, same linear model, at all labels)",
        "",
        "| task | metric | floor | ceiling | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in table.itertuples():
        note = f"FLAGGED: ceiling below {r.goal}; this task cannot tell methods apart" if r.flagged else ""
        lines.append(f"| {r.task} | {r.metric} | {r.floor:.3f} | {r.ceiling:.3f} | {note} |")
    return "\n".join(lines) + "\n"


def efficiency_table(results: pd.DataFrame, chosen: pd.DataFrame, cfg: BenchmarkConfig) -> pd.DataFrame:
    """Per task, method and budget: the chosen mode's mean and its 95 % bootstrap interval (the figure's bands)."""
    rows = []
    for pick in chosen.itertuples():
        runs = results[
            (results["task"] == pick.task)
            & (results["method"] == pick.method)
            & (results["budget"] == pick.budget)
            & (results["mode"] == pick.mode)
        ]
        values = runs.set_index(["fold", "seed"])[metric_column(cfg, pick.task)]
        low, high = bootstrap_interval(values, cfg.seed)
        rows.append(dict(task=pick.task, method=pick.method, mode=pick.mode, budget=pick.budget, mean=values.mean()))
        rows[-1].update(low=low, high=high, metric=metric_column(cfg, pick.task).removeprefix("test/"))
    return pd.DataFrame(rows)


def task_figure(efficiency: pd.DataFrame, task: str, path: Path) -> Path:
    """Label efficiency: the chosen mode of each method, the floor and the ceiling against the label budget,
    each with its 95 % interval (bootstrap over held-out studies and draws) as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = efficiency[efficiency["task"] == task]
    metric, budgets = table["metric"].iloc[0], budget_order(table["budget"])
    figure, axes = plt.subplots(figsize=(7, 4))
    for index, (method, runs) in enumerate(table.groupby("method", sort=False)):
        runs = runs.sort_values("budget", key=lambda b: b.map(budgets.index))
        x = runs["budget"].map(budgets.index)
        style = {"color": f"C{index}", "linestyle": ":" if method in (FLOOR[0], CEILING[0]) else "-"}
        axes.plot(x, runs["mean"], marker="o", label=method, **style)
        axes.fill_between(x, runs["low"], runs["high"], color=style["color"], alpha=0.15, linewidth=0)
    if metric in CHANCE:
        axes.axhline(CHANCE[metric], color="0.6", linewidth=1, zorder=0)
    axes.set_xticks(range(len(budgets)), [budget_label(b) for b in budgets], fontsize="small")
    axes.set_xlabel("label budget")
    axes.set_ylabel(f"{metric} (mean, 95 % interval)")
    axes.set_title(f"{task}: each method in its chosen mode")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=120, format="png")
    plt.close(figure)
    return path


def pretraining_table(summary: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """One row per pre-trained method: what pre-training cost (epochs, minutes, scans/s, data wait), its online
    probe at initialisation, at the end and the change, and each task's metric at the fewest labels in the
    method's chosen mode there."""
    rows = []
    for record in records.to_dict("records"):
        row = {key: value for key, value in record.items() if not (isinstance(value, float) and pd.isna(value))}
        for task, table in summary[summary["method"] == record["method"]].groupby("task", sort=False):
            fewest = table[(table["budget"] == budget_order(table["budget"])[0]) & table["chosen"]]
            if len(fewest):
                pick = fewest.iloc[0]
                row[f"{task} {pick['metric']} ({budget_label(pick['budget'])})"] = (
                    f"{pick['mean']:.3f} ± {pick['std']:.3f} ({pick['mode'].replace('_', ' ')})"
                )
        rows.append(row)
    return pd.DataFrame(rows)


def pretraining_markdown(
    table: pd.DataFrame, title: str = "## Pre-training (online probe at initialisation and end)"
) -> str:
    """The pre-training table as Markdown (empty without pre-trained methods)."""
    if table.empty:
        return ""
    columns = list(table.columns)
    lines = [title, "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for _, row in table.iterrows()]
    return "\n".join(lines) + "\n"


def site_gap_table(summary: pd.DataFrame, pooled: pd.DataFrame, cfg: BenchmarkConfig) -> pd.DataFrame:
    """Per linear model, task and budget: the held-out-study metric beside the pooled folds' one.

    ``gap`` is held-out minus pooled, signed so that < 0 means worse on an unseen study; it is
    ``within`` the goal when no more than :data:`SITE_GAP` worse.
    """
    if pooled.empty:
        return pd.DataFrame()
    both = summary.merge(summary_table(pooled, cfg), on=KEYS, suffixes=("", "_pooled"))
    sign = both["metric"].map(lambda metric: -1.0 if metric in LOWER_BETTER else 1.0)
    both["gap"] = sign * (both["mean"] - both["mean_pooled"])
    both["within"] = both["gap"] >= -SITE_GAP
    return both[[*KEYS, "metric", "mean", "std", "mean_pooled", "std_pooled", "gap", "within"]]


def site_gap_markdown(gaps: pd.DataFrame) -> str:
    """The site-gap table as Markdown (empty when the benchmark did not hold studies out)."""
    if gaps.empty:
        return ""
    lines = [
        f"## Held-out study against pooled folds (linear models; goal: at most {SITE_GAP} worse)",
        "",
        "| task | budget | method | held-out study | pooled folds | held-out minus pooled | within |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in gaps.iterrows():
        lines.append(
            f"| {r['task']} | {budget_label(r['budget'])} | {r['method']} ({r['mode'].replace('_', ' ')}) "
            f"| {r['mean']:.3f} ± {r['std']:.3f} | {r['mean_pooled']:.3f} ± {r['std_pooled']:.3f} "
            f"| {r['gap']:+.3f} | {'yes' if r['within'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    """A table cell: blank for missing, whole numbers (epochs, steps) as they are, others to 3 decimals."""
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.0f}" if value.is_integer() else f"{value:.3f}"
    return "" if value is None else str(value)


COMPUTE_TITLES = {
    "equal_time": "equal pre-training time (every method the same wall-clock budget)",
    "equal_epochs": "equal pre-training epochs",
}


def report(
    outcome: Outcome, cfg: BenchmarkConfig, out: Path, rule: str, suffix: str = ""
) -> tuple[pd.DataFrame, list[str]]:
    """One compute rule's CSV files (``benchmark_<table><suffix>.csv``) and Markdown sections."""
    chosen = chosen_modes(outcome.selection, outcome.results, cfg)
    summary = with_chosen(with_gap_closed(summary_table(outcome.results, cfg)), chosen)
    draws = outcome.results["seed"].nunique()  # a second compute rule runs fewer draws than the config's seeds
    folds = ("held-out studies" if cfg.by_study else "folds") + (f" x {draws} draws" if draws > 1 else "")
    if 0 < cfg.trained_draws < draws and outcome.results["mode"].isin(TRAINED_MODES).any():
        folds += f"; Lightning runs x {cfg.trained_draws}"
    paired = paired_differences(outcome.results, chosen, cfg)
    pretraining = pretraining_table(summary, outcome.pretraining)
    tables = {"folds": outcome.results, "summary": summary, "chosen_modes": chosen, "paired": paired}
    tables |= {"pretraining": pretraining, "ceiling": ceiling_table(summary)}
    if not outcome.selection.empty:
        tables["selection_folds"] = outcome.selection
    for name, table in tables.items():
        write_csv(table, out / f"benchmark_{name}{suffix}.csv")
    title = COMPUTE_TITLES[rule] if len(outcome.pretraining) else ""
    sections = [
        markdown(summary, folds, f"# ICHOR benchmark: {title}" if title else "# ICHOR benchmark"),
        ceiling_markdown(tables["ceiling"]),
        paired_markdown(paired),
        pretraining_markdown(pretraining, f"## Pre-training ({title}; online probe at initialisation and end)"),
    ]
    return summary, sections


def write_report(outcomes: dict[str, Outcome], cfg: BenchmarkConfig, out: Path) -> pd.DataFrame:
    """benchmark_{folds,summary,chosen_modes,paired,pretraining,ceiling,label_efficiency,site_gap}.csv,
    benchmark_summary.md and figures/<task>.png under ``out`` for the main compute rule (the first);
    the others' tables as ``benchmark_<table>_<rule>.csv`` and as later sections of the Markdown."""
    (main, outcome), *others = outcomes.items()
    summary, sections = report(outcome, cfg, out, main)
    gaps = site_gap_table(summary, outcome.pooled, cfg)
    if not gaps.empty:
        write_csv(gaps, out / "benchmark_site_gap.csv")
    for rule, other in others:
        sections += report(other, cfg, out, rule, f"_{rule}")[1]
    write_text(out / "benchmark_summary.md", "\n".join([*sections, site_gap_markdown(gaps)]))
    efficiency = efficiency_table(outcome.results, chosen_modes(outcome.selection, outcome.results, cfg), cfg)
    write_csv(efficiency, out / "benchmark_label_efficiency.csv")
    for task in efficiency["task"].unique():
        task_figure(efficiency, task, out / "figures" / f"{task}.png")
    return summary
