"""LoRA against fine-tuning for ICHOR's own encoder, at 10 labelled subjects per class.

Runs ``ichor benchmark`` with a benchmark config (default: the demo's) narrowed to the MAE encoder
and the two Lightning modes, ``lora`` and ``finetune``, at the Lightning runs' budget and draws, on
every task and held-out study of that config; the MAE is pre-trained by the config's own rule
(equal time on the demo). Then prints, per task, each mode's mean, the paired difference LoRA
minus fine-tuning on the same (held-out study, draw) with its 95 % bootstrap interval (> 0: LoRA
better; "ties" when the interval holds 0), and each mode's trainable parameters.

    python benchmarks/lora_vs_finetune.py --out runs/lora_vs_finetune

Runs finished in OUT are reused by content, as ``ichor benchmark`` reuses them, also under new
paths: a copy of a finished demo benchmark's folder (``cp -r runs/benchmark_demo
runs/lora_vs_finetune``) lends its MAE and its LoRA runs, and only fine-tuning is trained. OUT gets
this narrowed benchmark's report files (so give it its own folder) and ``lora_vs_finetune.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from ichor.benchmark import BenchmarkConfig, load_config
from ichor.benchmark.choice import LOWER_BETTER, metric_column
from ichor.benchmark.intervals import bootstrap_interval, verdict
from ichor.benchmark.run import run_benchmark
from ichor.io import write_csv

MODES = ("lora", "finetune")
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def trainable_parameters(checkpoint: Path, mode: str) -> int:
    """Parameters a run of ``mode`` trains, from its checkpoint: every one for fine-tuning; for LoRA
    the adapters and everything outside the (frozen) encoder."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    names = [name for name in state if not name.endswith(BUFFERS)]
    if mode == "lora":
        names = [name for name in names if "lora_" in name or not name.startswith("encoder.")]
    return sum(state[name].numel() for name in names)


def compare(results: pd.DataFrame, cfg: BenchmarkConfig, out: Path) -> pd.DataFrame:
    """Per task: each mode's mean, LoRA minus fine-tuning on shared (study, draw) pairs, trainable parameters."""
    rows = []
    for task, group in results.groupby("task", sort=False):
        column = metric_column(cfg, task)
        scores = group.pivot_table(index=["fold", "seed"], columns="mode", values=column)
        sign = -1.0 if column.removeprefix("test/") in LOWER_BETTER else 1.0
        diff = sign * (scores["lora"] - scores["finetune"]).dropna()
        low, high = bootstrap_interval(diff, cfg.seed)
        counts = {
            mode: trainable_parameters(next((out / task / "mae" / mode).rglob("best.ckpt")), mode) for mode in MODES
        }
        rows.append(
            dict(
                task=task,
                metric=column.removeprefix("test/"),
                lora=float(scores["lora"].mean()),
                finetune=float(scores["finetune"].mean()),
                difference=float(diff.mean()),
                low=low,
                high=high,
                pairs=len(diff),
                verdict=verdict(low, high),
                lora_trainable=counts["lora"],
                finetune_trainable=counts["finetune"],
            )
        )
    return pd.DataFrame(rows)


def narrowed(path: str) -> BenchmarkConfig:
    """The benchmark config at ``path`` narrowed to the MAE, LoRA and fine-tuning, at its Lightning runs' budget."""
    full = load_config(path)
    budget = (full.trained_budgets or full.budgets)[0]
    return load_config(
        path,
        {
            "pretrain": {"mae": full.pretrain["mae"]},
            "modes": list(MODES),
            "scratch": False,
            "baseline": False,
            "oracle": False,
            "selection": None,
            "budgets": [budget],
            "trained_budgets": [budget],
            "compute": full.compute[:1],
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="lightning_configs/benchmark_demo.yaml")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    cfg = narrowed(args.config)
    results = run_benchmark(cfg, args.out)
    table = compare(results[results["method"] == "mae"], cfg, args.out)
    write_csv(table, args.out / "lora_vs_finetune.csv")
    pd.set_option("display.width", 200)
    print(f"\nLoRA against fine-tuning, MAE encoder, {cfg.budgets[0]:g} labelled subjects per class ({args.config}):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
