"""Choose the demo's MAE recipe on the selection cohort: does pre-training beat its own random start?

Each recipe is ``lightning_configs/pretrain_demo.yaml`` (composed after the demo's shared data and
trainer) with four choices set: the loss target (plain or per-patch normalised), the mask ratio,
the patch size at 4 mm (6 or 8 voxels: 24 or 32 mm; patch 6 needs a grid divisible by 6) and the
intensity normalisation (fixed scale, or relative to the brain mean with the global CBF scalars
beside the features). Every recipe pre-trains on the `make demo-data` studies, and the online probe
scores its frozen features on the selection cohort only (`make probe-data`: studies 17-20, never a
benchmark cohort), before the first step and after the last, over ``--draws`` label draws (repeated,
subject-grouped cross-validation with the same folds at both ends).

A recipe counts when its probe AUROC after pre-training beats its initialisation beyond the
spread of the draws (mean paired gain > 2 standard deviations of the per-draw gains) and its
RankMe (centred features) at least doubles. The winner is the counting recipe with the highest
AUROC after pre-training; when none counts, the recipe with the highest AUROC among those that beat
their start with RankMe kept (at least 0.9 of its initial value: no collapse), and failing that the
largest gain. The ``why`` column says which.

    make demo-data probe-data
    python benchmarks/recipe_grid.py --out runs/recipe_grid
    python benchmarks/recipe_grid.py --out runs/recipe_grid --only previous,paper   # a subset

Finished recipes are read back from OUT/results.csv (a rerun with the same OUT trains only the
missing ones); ``--publish docs/results/recipe_grid`` copies the table and this command there.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
from pathlib import Path

import pandas as pd

from ichor.evaluation.online_probe import OnlineProbe, paired_gain
from ichor.io import write_csv, write_text
from ichor.training.runs import Run, build_run

CONFIGS = ["lightning_configs/common/demo.yaml", "lightning_configs/pretrain_demo.yaml"]
# The demo recipe shipped before this grid; every recipe states all four choices, so that a table
# stays reproducible whatever pretrain_demo.yaml ships later.
PREVIOUS = {"norm_pix_loss": True, "mask_ratio": 0.75, "patch_size": 8, "normalization": "scale"}
RECIPES: dict[str, dict] = {
    "previous": {},
    "plain": {"norm_pix_loss": False},
    "mask_0.5": {"mask_ratio": 0.5},
    "patch_6": {"patch_size": 6},
    "relative": {"normalization": "relative"},
    "plain_relative": {"norm_pix_loss": False, "normalization": "relative"},
    "paper_scale": {"norm_pix_loss": False, "mask_ratio": 0.5, "patch_size": 6},
    "paper": {"norm_pix_loss": False, "mask_ratio": 0.5, "patch_size": 6, "normalization": "relative"},
}
SHAPES = {8: [48, 56, 48], 6: [48, 54, 48]}  # 4 mm grids divisible by the patch (32 or 24 mm)
RESULTS = "results.csv"
GAIN_SPREADS = 2.0  # the gain must exceed this many standard deviations of the per-draw gains
RANKME_FACTOR = 2.0
RANKME_KEPT = 0.9  # "kept": the final RankMe at least this share of the initial one (no collapse)


def recipe_run(name: str, epochs: int, draws: int, probe_manifests: str) -> Run:
    """The recipe's pre-training, its online probe on the selection cohort at the start and the end only."""
    probe = {
        "class_path": "ichor.evaluation.online_probe.OnlineProbe",
        "init_args": {
            "target": "diagnosis",
            "manifests": [probe_manifests],
            "every_n_epochs": epochs,
            "blocks": 2,
            "draws": draws,
        },
    }
    choices = PREVIOUS | RECIPES[name]
    model = {k: choices[k] for k in ("norm_pix_loss", "mask_ratio")} | {
        "backbone": {"patch_size": choices["patch_size"]}
    }
    data = {"normalization": choices["normalization"], "shape": SHAPES[choices["patch_size"]]}
    trainer = {"max_epochs": epochs, "callbacks": [probe], "enable_progress_bar": False}
    return Run.of(CONFIGS, {"model": {"init_args": model}, "data": {"init_args": data}, "trainer": trainer})


def train_recipe(name: str, out: Path, epochs: int, draws: int, probe_manifests: str) -> dict:
    """Pre-train one recipe under ``out/name`` and return its row of the table."""
    cli = build_run(recipe_run(name, epochs, draws, probe_manifests), out / name)
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    minutes = (time.perf_counter() - started) / 60
    (probe,) = [c for c in cli.trainer.callbacks if isinstance(c, OnlineProbe)]
    gain, spread = paired_gain(probe.initial_draws, probe.latest_draws, "auroc")
    start, end = probe.initial, probe.latest
    return {
        "recipe": name,
        "epochs": epochs,
        "minutes": round(minutes, 1),
        "auroc_initial": start["probe/auroc"],
        "auroc_final": end["probe/auroc"],
        "auroc_gain": gain,
        "auroc_gain_sd": spread,
        "rankme_initial": start["probe/rankme"],
        "rankme_final": end["probe/rankme"],
        "site_accuracy_initial": start.get("probe/site_balanced_accuracy"),
        "site_accuracy_final": end.get("probe/site_balanced_accuracy"),
        "val_loss": float(cli.trainer.callback_metrics.get("val/loss", float("nan"))),
    }


def with_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """The rule's columns and the chosen recipe (``chosen``; ``why``: which part of the rule chose it)."""
    table = table.copy()
    table["beats_start"] = table["auroc_gain"] > GAIN_SPREADS * table["auroc_gain_sd"]
    table["rankme_doubles"] = table["rankme_final"] >= RANKME_FACTOR * table["rankme_initial"]
    table["rankme_kept"] = table["rankme_final"] >= RANKME_KEPT * table["rankme_initial"]
    table["counts"] = table["beats_start"] & table["rankme_doubles"]
    tiers = [
        ("counts: beats its start, RankMe doubles", table["counts"], "auroc_final"),
        ("none counts: beats its start, RankMe kept", table["beats_start"] & table["rankme_kept"], "auroc_final"),
        ("none beats its start with RankMe kept: the largest gain", table["auroc_gain"].notna(), "auroc_gain"),
    ]
    why, eligible, by = next(tier for tier in tiers if tier[1].any())
    best = table.loc[eligible, by].idxmax()
    table["chosen"] = table.index == best
    table["why"] = [why if index == best else "" for index in table.index]
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/recipe_grid")
    parser.add_argument("--epochs", type=int, default=15, help="pre-training epochs of every recipe")
    parser.add_argument("--draws", type=int, default=10, help="label draws of the online probe")
    parser.add_argument("--probe-manifests", default="data_manifests/probe", help="the selection cohort")
    parser.add_argument("--only", help="comma-separated recipe names (default: all)")
    parser.add_argument("--publish", help="copy the table and the command into this folder (docs/results/<name>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    names = args.only.split(",") if args.only else list(RECIPES)
    if unknown := sorted(set(names) - set(RECIPES)):
        parser.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    out = Path(args.out)
    results = out / RESULTS
    done = pd.read_csv(results) if results.is_file() else pd.DataFrame()
    for name in names:
        if len(done) and ((done["recipe"] == name) & (done["epochs"] == args.epochs)).any():
            continue
        row = train_recipe(name, out, args.epochs, args.draws, args.probe_manifests)
        print(
            f"{name}: AUROC {row['auroc_initial']:.3f} -> {row['auroc_final']:.3f}, RankMe "
            f"{row['rankme_initial']:.1f} -> {row['rankme_final']:.1f}, {row['minutes']} min",
            flush=True,
        )
        done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
        write_csv(done, results)
    table = with_verdicts(done[done["recipe"].isin(names)].reset_index(drop=True))  # every length trained
    print(table.to_string(index=False, float_format="{:.3f}".format))
    if args.publish:
        folder = Path(args.publish)
        write_csv(table, folder / RESULTS)
        command = "python benchmarks/recipe_grid.py " + " ".join(argv or sys.argv[1:])
        write_text(folder / "command.txt", f"# {datetime.date.today()}\nmake demo-data probe-data\n{command}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
