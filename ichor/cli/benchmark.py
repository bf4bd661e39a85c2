"""Benchmark pre-training methods: pre-train each once, then probe / fine-tune on every task,
label budget and fold, beside training from scratch and a regional-mean-CBF linear baseline.

  ichor benchmark --config lightning_configs/benchmark_demo.yaml --out runs/benchmark_demo

OUT gets pretrain/<method>/encoder and <task>/<method>/<mode>/budget-<b>/<fold>/ (split file,
logs, checkpoints, result.json); both are reused when they were made from the same config values,
manifests and data (by content, not paths), so a stopped benchmark restarts where it stopped and a
changed part runs again. Every task is checked before anything is pre-trained. The results are
benchmark_folds.csv, benchmark_summary.csv, benchmark_summary.md (mean ± std over folds or
held-out studies) and figures/<task>.png (metric vs label budget).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="benchmark YAML (see lightning_configs/benchmark_demo.yaml)")
    parser.add_argument("--out", default="runs/benchmark", help="output folder")


def run(args: argparse.Namespace) -> int:
    from ichor.benchmark import load_config, run_benchmark

    logger = logging.getLogger("ichor.benchmark")  # one line per run: where a long benchmark has got to
    if not logger.handlers:
        progress = logging.StreamHandler()
        progress.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(progress)
    logger.setLevel(logging.INFO)
    try:
        run_benchmark(load_config(args.config), args.out)
    except ValueError as error:
        print(f"ichor benchmark: {error}", file=sys.stderr)
        return 1
    print((Path(args.out) / "benchmark_summary.md").read_text())
    return 0
