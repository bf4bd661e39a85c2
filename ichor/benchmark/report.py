"""The benchmark's outputs: per-fold CSV, summary CSV + Markdown (mean ± std over folds), one figure per task.

The summary has one row per (task, method, mode, budget): the task's chosen metric as
``metric``/``mean``/``std``, and every test metric as ``<name>_mean``/``<name>_std`` columns.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ichor.benchmark.config import BenchmarkConfig
from ichor.data.atomic import atomic_path, write_csv, write_text
from ichor.downstream.cv import summarise

KEYS = ["task", "method", "mode", "budget"]
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


def markdown(summary: pd.DataFrame, folds: str = "folds") -> str:
    """Per task: rows method/mode, columns label budgets, cells mean ± std (over ``folds``) of the task's metric."""
    lines = ["# ICHOR benchmark", ""]
    for task, table in summary.groupby("task", sort=False):
        metric, budgets = table["metric"].iloc[0], sorted(table["budget"].unique())
        lines += [
            f"## {task} ({metric}, mean ± std over {folds})",
            "",
            "| method | mode | " + " | ".join(f"{b:g} of labels" for b in budgets) + " |",
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
    metric, budgets = table["metric"].iloc[0], sorted(table["budget"].unique())
    colours = {method: f"C{i}" for i, method in enumerate(table["method"].unique())}
    lines = list(table.groupby(["method", "mode"], sort=False))
    figure, axes = plt.subplots(figsize=(7, 4))
    for index, ((method, mode), runs) in enumerate(lines):
        runs = runs.sort_values("budget")
        nudge = 1.04 ** (index - (len(lines) - 1) / 2)  # multiplicative: the x axis is logarithmic
        label = method if mode in (method, "baseline") else f"{method} ({mode.replace('_', ' ')})"
        axes.errorbar(
            runs["budget"] * nudge,
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
    axes.set_xscale("log")
    axes.minorticks_off()
    axes.set_xticks(budgets, [f"{b:g}" for b in budgets])
    axes.set_xlabel("fraction of training labels")
    axes.set_ylabel(f"{metric} (mean ± std over {folds})")
    axes.set_title(task)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=120, format="png")
    plt.close(figure)
    return path


def write_report(results: pd.DataFrame, cfg: BenchmarkConfig, out: Path) -> pd.DataFrame:
    """benchmark_folds.csv, benchmark_summary.csv, benchmark_summary.md and figures/<task>.png under ``out``."""
    summary = summary_table(results, cfg)
    folds = "held-out studies" if cfg.by_study else "folds"
    write_csv(results, out / "benchmark_folds.csv")
    write_csv(summary, out / "benchmark_summary.csv")
    write_text(out / "benchmark_summary.md", markdown(summary, folds))
    for task in summary["task"].unique():
        task_figure(summary, task, out / "figures" / f"{task}.png", folds)
    return summary
