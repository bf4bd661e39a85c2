"""Run a benchmark: pre-train each method once, then every task x method x mode x budget x fold.

Pre-training goes through the method's own config (``IchorCLI`` fit), and its last checkpoint
is exported with ``ichor.weights.export_encoder``; an encoder already exported under OUT is
reused, so an interrupted benchmark restarts without re-pre-training. Every downstream run is
``ichor.downstream.cv.run_fold`` on a split file: the folds are planned once per task
(subject-grouped, stratified, or one study held out at a time) and are the same for every
method, so methods are compared on identical test subjects. A label budget keeps a stratified
fraction of each fold's training subjects and leaves the others out of the split file
(validation and test subjects are unchanged).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ichor.benchmark.baseline import fit_and_score, regional_features
from ichor.benchmark.config import BenchmarkConfig, PretrainSpec, TaskSpec
from ichor.downstream.cv import Fold, run_fold, subject_folds, target_strata

log = logging.getLogger(__name__)

SCRATCH = "scratch"
BASELINE = "regional_mean"


def budget_fold(fold: Fold, rows: pd.DataFrame, target: str, budget: float, seed: int = 0) -> Fold:
    """``fold`` with only ``budget`` of its training subjects, drawn per target stratum (at least one each).

    Each stratum is shuffled once with ``seed`` and cut at the budget, so a smaller budget's
    subjects are a subset of a larger one's: the curve measures labels, not a new draw.
    """
    if budget >= 1:
        return fold
    splits = fold.splits
    train = splits.loc[splits["split"] == "train", "subject"]
    labels = rows.drop_duplicates("subject").set_index("subject")[target]
    strata = pd.Series(target_strata(labels.loc[train]), index=train.to_numpy())
    rng = np.random.default_rng(seed)
    kept = []
    for _, subjects in strata.groupby(strata):
        count = max(1, round(budget * len(subjects)))
        kept += list(rng.permutation(subjects.index.to_numpy())[:count])
    keep = (splits["split"] != "train") | splits["subject"].isin(kept)
    return Fold(fold.name, splits.loc[keep].reset_index(drop=True))


def pretrain(method: str, spec: PretrainSpec, cfg: BenchmarkConfig, out: Path) -> Path:
    """Pre-train ``method`` (or reuse its export under ``out``); returns the encoder export folder."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from ichor.lightning_cli import IchorCLI
    from ichor.weights import METADATA_FILE, export_encoder

    folder = out / "pretrain" / method
    encoder = folder / "encoder"
    if (encoder / METADATA_FILE).is_file():
        log.info("benchmark: reusing the %s encoder in %s", method, encoder)
        return encoder
    args = ["--config", spec.config, *cfg.overrides, *cfg.pretrain_overrides, *_epochs(cfg, "pretrain"), *spec.overrides]
    cli = IchorCLI(args=args, run=False)
    trainer = cli.trainer
    if isinstance(trainer.logger, TensorBoardLogger):
        trainer.logger = TensorBoardLogger(save_dir=str(folder), name="logs", version="")
    for callback in trainer.checkpoint_callbacks:
        callback.dirpath = str(folder / "checkpoints")
    trainer.fit(cli.model, datamodule=cli.datamodule)
    callback = trainer.checkpoint_callback
    checkpoint = callback and (callback.last_model_path or callback.best_model_path)
    if not checkpoint:
        raise ValueError(f"pre-training config {spec.config} ({method}) saved no checkpoint: it needs a ModelCheckpoint callback")
    return export_encoder(checkpoint, encoder, overwrite=True)


def _epochs(cfg: BenchmarkConfig, stage: str) -> list[str]:
    return [f"--trainer.max_epochs={cfg.epochs[stage]}"] if stage in cfg.epochs else []


def task_args(task: TaskSpec, mode: str, encoder: Path, cfg: BenchmarkConfig) -> list[str]:
    """Lightning CLI arguments of one downstream run (without its split file)."""
    args = ["--config", task.config(mode), *cfg.overrides, *cfg.task_overrides, *_epochs(cfg, mode),
            f"--model.init_args.encoder={encoder}", f"--model.init_args.mode={mode}",
            f"--model.init_args.target={task.target}", f"--model.init_args.head={task.head}",
            f"--data.init_args.target={task.target}"]
    if task.target_values is not None:
        args.append(f"--data.init_args.target_values={json.dumps([str(v) for v in task.target_values])}")
    return args


def task_rows(task: TaskSpec, encoder: Path, cfg: BenchmarkConfig) -> tuple[pd.DataFrame, int | str | None]:
    """The task's labelled manifest rows (as its config's datamodule reads them) and its 4D volume choice."""
    from ichor.data.splits import labelled_rows
    from ichor.lightning_cli import IchorCLI
    from ichor.manifest import read_manifests

    base = IchorCLI(args=task_args(task, "linear_probe", encoder, cfg), run=False)
    rows = read_manifests(base.datamodule.hparams.manifests)
    rows = rows.loc[labelled_rows(rows, task.target, task.target_values)].reset_index(drop=True)
    return rows, base.datamodule.hparams.volume


def plan(cfg: BenchmarkConfig, task: TaskSpec, rows: pd.DataFrame) -> dict[float, list[Fold]]:
    """Budget -> folds; every method sees exactly these split files."""
    folds = subject_folds(rows, task.target, cfg.folds, cfg.by_study, cfg.val_fraction, cfg.seed)
    return {budget: [budget_fold(f, rows, task.target, budget, cfg.seed) for f in folds] for budget in cfg.budgets}


def run_benchmark(cfg: BenchmarkConfig, out: str | os.PathLike) -> pd.DataFrame:
    """Run everything ``cfg`` describes under ``out``; returns one row per run and fold (also written as CSV)."""
    from ichor.benchmark.report import write_report

    out = Path(out)
    encoders = {method: pretrain(method, spec, cfg, out) for method, spec in cfg.pretrain.items()}
    architecture = next(iter(encoders.values()))  # scratch only borrows its architecture
    results = []
    for task in cfg.tasks:
        rows, volume = task_rows(task, architecture, cfg)
        budgets = plan(cfg, task, rows)
        runs = [(method, mode, encoder) for method, encoder in encoders.items() for mode in cfg.modes]
        runs += [(SCRATCH, SCRATCH, architecture)] if cfg.scratch else []
        for budget, folds in budgets.items():
            for method, mode, encoder in runs:
                folder = out / task.name / method / mode / f"budget-{budget:g}"
                for fold in folds:
                    log.info("benchmark: %s %s %s budget %g %s", task.name, method, mode, budget, fold.name)
                    result = run_fold(task_args(task, mode, encoder, cfg), fold, folder)
                    results.append({"task": task.name, "method": method, "mode": mode, "budget": budget, **result})
        if cfg.baseline:
            results += baseline_results(task, rows, volume, budgets, cfg.seed)
    table = pd.DataFrame(results)
    write_report(table, cfg, out)
    return table


def baseline_results(task: TaskSpec, rows: pd.DataFrame, volume: int | str | None,
                     budgets: dict[float, list[Fold]], seed: int) -> list[dict]:
    """The regional-mean baseline on the same folds and budgets as the models."""
    features = regional_features(rows, volume)
    results = []
    for budget, folds in budgets.items():
        for fold in folds:
            split = rows["subject"].map(fold.splits.set_index("subject")["split"])
            scores = fit_and_score(features, rows.loc[split == "train"], rows.loc[split == "test"], task.target,
                                   task.is_classification, seed)
            counts = {f"n_{s}": fold.count(s) for s in ("train", "val", "test")}
            results.append({"task": task.name, "method": BASELINE, "mode": "baseline", "budget": budget,
                            "fold": fold.name, **counts, **scores})
    return results

