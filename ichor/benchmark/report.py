"""The benchmark's outputs: per-fold CSV, summary CSV + Markdown (mean ± std over folds), one figure per task.

The summary has one row per (task, method, mode, budget): the task's chosen metric as
``metric``/``mean``/``std`` over folds and seeds, and every test metric as
``<name>_mean``/``<name>_std`` columns. The paired table compares the reference method (its
best mode at each budget) with every other method and mode on the same folds and seeds: the
mean difference and its own standard deviation, and a verdict ("wins" only when the mean
difference is larger than that spread).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ichor.benchmark.config import BenchmarkConfig
from ichor.downstream.cv import summarise
from ichor.io import atomic_path, write_csv, write_text

KEYS = ["task", "method", "mode", "budget"]
LOWER_BETTER = {"mae", "rmse"}
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


def paired_differences(results: pd.DataFrame, cfg: BenchmarkConfig) -> pd.DataFrame:
    """Reference (best mode per task and budget) minus every other method/mode, on shared (fold, seed) pairs."""
    primary = {task.name: task.metric for task in cfg.tasks}
    rows = []
    for (task, budget), group in results.groupby(["task", "budget"], sort=False):
        column = f"test/{primary[task]}"
        if column not in group:
            continue
        scores = group.pivot_table(index=["fold", "seed"], columns=["method", "mode"], values=column)
        sign = -1.0 if primary[task] in LOWER_BETTER else 1.0
        ours = [key for key in scores.columns if key[0] == cfg.reference]
        if not ours:
            continue
        best = max(ours, key=lambda key: sign * scores[key].mean())
        for other in scores.columns:
            if other[0] == cfg.reference:
                continue
            diff = sign * (scores[best] - scores[other]).dropna()
            mean, spread = float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else float("nan")
            verdict = "wins" if mean > spread else "loses" if -mean > spread else "ties"
            rows.append(
                dict(
                    task=task,
                    budget=budget,
                    reference=f"{best[0]} ({best[1]})",
                    versus=f"{other[0]} ({other[1]})",
                    metric=primary[task],
                    difference=mean,
                    spread=spread,
                    pairs=len(diff),
                    verdict=verdict,
                )
            )
    return pd.DataFrame(rows)


def paired_markdown(paired: pd.DataFrame) -> str:
    """Per task and budget: the reference's paired difference against each other method (better is > 0)."""
    if paired.empty:
        return ""
    lines = [
        "## Paired differences (reference minus other, on the same folds and seeds; > 0 is better)",
        "",
        "| task | budget | reference | versus | difference ± spread | pairs | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r.task} | {budget_label(r.budget)} | {r.reference} | {r.versus} | {r.difference:+.3f} ± {r.spread:.3f}"
        f" | {r.pairs} | {r.verdict} |"
        for r in paired.itertuples()
    ]
    return "\n".join(lines) + "\n"


def markdown(summary: pd.DataFrame, folds: str = "folds") -> str:
    """Per task: rows method/mode, columns label budgets, cells mean ± std (over ``folds``) of the task's metric."""
    lines = ["# ICHOR benchmark", ""]
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
            lines.append(
                f"| {method} | {mode} | "
                + " | ".join(
                    f"{cells.loc[b, 'mean']:.3f} ± {cells.loc[b, 'std']:.3f}" if b in cells.index else ""
                    for b in budgets
                )
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def task_figure(summary: pd.DataFrame, task: str, path: Path, folds: str = "folds") -> Path:
    """Metric vs label budget: a colour per method, dashed for the linear probe, ± std bars.

    Lines are nudged sideways so that error bars of equal budgets stay apart, the legend sits
    outside the axes, and a grey line marks chance where the metric has a fixed one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary[summary["task"] == task]
    metric, budgets = table["metric"].iloc[0], budget_order(table["budget"])
    colours = {method: f"C{i}" for i, method in enumerate(table["method"].unique())}
    lines = list(table.groupby(["method", "mode"], sort=False))
    figure, axes = plt.subplots(figsize=(7, 4))
    for index, ((method, mode), runs) in enumerate(lines):
        runs = runs.sort_values("budget", key=lambda b: b.map(budgets.index))
        nudge = 0.04 * (index - (len(lines) - 1) / 2)
        label = method if mode in (method, "baseline") else f"{method} ({mode.replace('_', ' ')})"
        axes.errorbar(
            runs["budget"].map(budgets.index) + nudge,
            runs["mean"],
            yerr=runs["std"].fillna(0),
            marker="o",
            capsize=3,
            color=colours[method],
            linestyle="--" if mode == "linear_probe" else "-",
            label=label,
        )
    if metric in CHANCE:
        axes.axhline(CHANCE[metric], color="0.6", linewidth=1, zorder=0)
    axes.set_xticks(range(len(budgets)), [budget_label(b) for b in budgets], fontsize="small")
    axes.set_xlabel("label budget")
    axes.set_ylabel(f"{metric} (mean ± std over {folds})")
    axes.set_title(task)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=120, format="png")
    plt.close(figure)
    return path


def pretraining_table(summary: pd.DataFrame, online: pd.DataFrame) -> pd.DataFrame:
    """One row per pre-trained method: its last online-probe scalars beside each task's benchmark metric
    at the fewest labels, in the method's best mode there (a recipe ablation reads across a row)."""
    rows = []
    for method in online["method"] if len(online) else []:
        row = online.loc[online["method"] == method].iloc[0].dropna().to_dict()
        for task, table in summary[summary["method"] == method].groupby("task", sort=False):
            fewest = table[table["budget"] == budget_order(table["budget"])[0]]
            lower = table["metric"].iloc[0] in LOWER_BETTER
            best = fewest.loc[fewest["mean"].idxmin() if lower else fewest["mean"].idxmax()]
            row[f"{task} {best['metric']} ({budget_label(best['budget'])})"] = (
                f"{best['mean']:.3f} ± {best['std']:.3f} ({best['mode'].replace('_', ' ')})"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def pretraining_markdown(table: pd.DataFrame) -> str:
    """The pre-training table as Markdown (empty without pre-trained methods)."""
    if table.empty:
        return ""
    columns = list(table.columns)
    lines = [
        "## Pre-training (online probe at its last epoch; benchmark metric at the fewest labels, best mode)",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for _, row in table.iterrows()]
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
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.3f}"
    return "" if value is None else str(value)


def write_report(
    results: pd.DataFrame,
    cfg: BenchmarkConfig,
    out: Path,
    online: pd.DataFrame | None = None,
    pooled: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """benchmark_folds.csv, benchmark_summary.csv, benchmark_paired.csv, benchmark_pretraining.csv,
    benchmark_site_gap.csv, benchmark_summary.md and figures/<task>.png under ``out``.

    ``online``: each pre-trained method's last online-probe scalars (a ``method`` column);
    ``pooled``: the linear models' per-fold results on pooled folds (held-out-study runs only).
    """
    summary = summary_table(results, cfg)
    folds = ("held-out studies" if cfg.by_study else "folds") + (
        f" x {len(cfg.seeds)} seeds" if len(cfg.seeds) > 1 else ""
    )
    write_csv(results, out / "benchmark_folds.csv")
    write_csv(summary, out / "benchmark_summary.csv")
    paired = paired_differences(results, cfg)
    write_csv(paired, out / "benchmark_paired.csv")
    pretraining = pretraining_table(summary, online if online is not None else pd.DataFrame())
    write_csv(pretraining, out / "benchmark_pretraining.csv")
    gaps = site_gap_table(summary, pooled if pooled is not None else pd.DataFrame(), cfg)
    if not gaps.empty:
        write_csv(gaps, out / "benchmark_site_gap.csv")
    sections = [markdown(summary, folds), paired_markdown(paired), pretraining_markdown(pretraining)]
    write_text(out / "benchmark_summary.md", "\n".join([*sections, site_gap_markdown(gaps)]))
    for task in summary["task"].unique():
        task_figure(summary, task, out / "figures" / f"{task}.png", folds)
    return summary
