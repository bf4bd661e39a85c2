"""Cross-validate a downstream config: k folds grouped by subject and stratified by the target.

Each fold is the test set once; part of the other subjects (--val-fraction) validates,
the rest trains. With --by-study each study (site) is held out in turn. Per fold the
config is fitted, then its best checkpoint tested; OUT gets per-fold folders (split file,
logs, checkpoints), cv_folds.csv, cv_summary.csv and cv_summary.md (mean ± std). The
--config files compose in order, as for `ichor fit`; command-line overrides go after `--`:

  ichor cv --config lightning_configs/common/demo.yaml --config lightning_configs/probe_diagnosis.yaml --folds 5 --out runs/cv_probe -- --trainer.max_epochs=10

For a numeric quality target, --qei-baseline also scores each fold's test scans with the
plain QEI (from the manifests' gm/wm/csf maps) and reports its Pearson r with the target
as qei_pearson, next to the model's pearson:

  ichor cv --config lightning_configs/common/demo.yaml --config lightning_configs/probe_quality.yaml --folds 5 --qei-baseline --out runs/cv_probe_quality
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ichor.downstream.cv import cross_validate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", required=True, help="task config (repeatable, as for `ichor fit`)")
    parser.add_argument("--folds", type=int, default=5, help="number of folds (ignored with --by-study)")
    parser.add_argument("--by-study", action="store_true", help="hold out each study in turn instead of k folds")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="fraction of the non-test subjects that validates"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    parser.add_argument("--out", default="runs/cv", help="output folder")
    parser.add_argument(
        "--qei-baseline",
        action="store_true",
        help="also report the Pearson r of plain QEI with a numeric target per fold (qei_pearson); "
        "needs gm, wm, csf columns in the manifests",
    )
    parser.add_argument(
        "overrides", nargs="*", help="Lightning CLI overrides, after `--` (e.g. -- --trainer.max_epochs=5)"
    )


def run(args: argparse.Namespace) -> int:
    from ichor.training.runs import Run  # Lightning, imported when a run is made

    run = Run(configs=tuple(args.config), command_line=tuple(args.overrides))
    try:
        _, summary = cross_validate(
            run, args.out, args.folds, args.by_study, args.val_fraction, args.seed, args.qei_baseline
        )
    except ValueError as error:
        print(f"ichor cv: {error}", file=sys.stderr)
        return 1
    print((Path(args.out) / "cv_summary.md").read_text())
    return 0
