"""Run a benchmark: pre-train each method once, then every task x method x mode x budget x fold.

Pre-training goes through the method's own config (``IchorCLI`` fit), and its last checkpoint
is exported with ``ichor.models.weights.export_encoder``; the config's ``encoders`` (imported
brain encoders, shared exports) join them as they are. The folds are planned once per task
(subject-grouped, stratified, or one study held out at a time) and are the same for every
method, so methods are compared on identical test subjects. A label budget keeps a stratified
fraction of each fold's training subjects (validation and test subjects are unchanged).

``linear_probe`` and the regional-mean baseline fit one linear model per fold on per-scan
features (frozen encoder embeddings, regional mean CBF); ``finetune``, ``lora`` and ``scratch`` are
``ichor.downstream.cv.run_fold`` Lightning runs on a split file.

Everything finished is kept under OUT: an encoder exported with the same pre-training run
is reused (an interrupted pre-training resumes from its last checkpoint), and so is a fine-tuning
run whose ``result.json`` records the same run (configs and overrides) and split, so an interrupted benchmark
restarts where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ichor.benchmark.baseline import regional_features
from ichor.benchmark.config import BenchmarkConfig, PretrainSpec, TaskSpec
from ichor.data.schema import label_strata, labelled_rows
from ichor.downstream.cv import Fold, run_fold, subject_folds
from ichor.evaluation.linear import fit_and_score
from ichor.evaluation.online_probe import PREFIX as PROBE_PREFIX
from ichor.io import write_text

if TYPE_CHECKING:
    from ichor.training.runs import IchorCLI, Run

log = logging.getLogger(__name__)

SCRATCH = "scratch"
BASELINE = "regional_mean"
RESULT_FILE = "result.json"
ONLINE_PROBE_FILE = "online_probe.json"  # the pre-training's last online-probe scalars, beside its encoder
PRETRAIN_RECORD = "pretrain_args.json"  # the run the encoder beside it was pre-trained with


def budget_fold(fold: Fold, rows: pd.DataFrame, target: str, budget: float, seed: int = 0) -> Fold:
    """``fold`` with only ``budget`` of its training subjects, drawn per target stratum (at least one each).

    A budget in (0, 1) keeps that fraction of each stratum; a whole number >= 2 keeps that many
    subjects per stratum (all of a smaller one). Each stratum is shuffled once with ``seed`` and
    cut at the budget, so a smaller budget's subjects are a subset of a larger one's: the curve
    measures labels, not a new draw.
    """
    if budget == 1:
        return fold
    splits = fold.splits
    train = splits.loc[splits["split"] == "train", "subject"]
    labels = rows.drop_duplicates("subject").set_index("subject")[target]
    strata = pd.Series(label_strata(labels.loc[train]).to_numpy(), index=train.to_numpy())
    rng = np.random.default_rng(seed)
    kept = []
    for _, subjects in strata.groupby(strata, sort=False):
        count = int(budget) if budget > 1 else max(1, round(budget * len(subjects)))
        kept += list(rng.permutation(subjects.index.to_numpy())[:count])
    keep = (splits["split"] != "train") | splits["subject"].isin(kept)
    return Fold(fold.name, splits.loc[keep].reset_index(drop=True))


def pretrain(method: str, spec: PretrainSpec, cfg: BenchmarkConfig, out: Path) -> Path:
    """Pre-train ``method`` and export its encoder; returns the export folder.

    An export made with the same arguments is reused, and an interrupted pre-training with the same
    arguments resumes from its last checkpoint; changed arguments pre-train again.
    """
    from ichor.models.weights import METADATA_FILE, export_encoder
    from ichor.training.runs import build_run

    folder = out / "pretrain" / method
    encoder = folder / "encoder"
    run = pretrain_run(spec, cfg)
    record = folder / PRETRAIN_RECORD
    recorded = json.loads(record.read_text()).get("run") if record.is_file() else None
    if (encoder / METADATA_FILE).is_file():
        if recorded == run.record():
            log.info("benchmark: reusing the %s encoder in %s", method, encoder)
            return encoder
        if recorded is None:
            message = "benchmark: reusing the %s encoder in %s (made by an earlier ICHOR: no arguments recorded)"
            log.warning(message + "; delete %s to pre-train it again", method, encoder, folder)
            return encoder
        log.warning("benchmark: the %s pre-training arguments changed since %s: pre-training again", method, encoder)
    last = folder / "checkpoints" / "last.ckpt"
    resume = last if recorded == run.record() and last.is_file() else None
    log.info("benchmark: pre-training %s (%s)%s", method, spec.config[-1], f", resuming from {last}" if resume else "")
    write_text(record, json.dumps({"run": run.record()}, indent=1))
    cli = build_run(run, folder)
    trainer = cli.trainer
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
    callback = trainer.checkpoint_callback
    # A resumed run that had already finished saves nothing new: its last checkpoint is the result.
    checkpoint = (callback and (callback.last_model_path or callback.best_model_path)) or resume
    if not checkpoint:
        raise ValueError(f"pre-training config {spec.config[-1]} ({method}) saved no checkpoint")
    probe = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(PROBE_PREFIX)}
    write_text(folder / ONLINE_PROBE_FILE, json.dumps(probe, indent=1))
    return export_encoder(checkpoint, encoder, overwrite=True)


def online_probe_values(out: Path, methods: list[str]) -> pd.DataFrame:
    """Each pre-trained method's last online-probe scalars (one row per method; none without the callback)."""
    rows = []
    for method in methods:
        record = out / "pretrain" / method / ONLINE_PROBE_FILE
        values = json.loads(record.read_text()) if record.is_file() else {}
        rows.append({"method": method, **values})
    return pd.DataFrame(rows)


def pool_subjects(spec: PretrainSpec, cfg: BenchmarkConfig) -> set[str]:
    """Subjects of the scans a pre-training config reads (its manifests after the benchmark's overrides)."""
    from ichor.data.manifest import read_manifests
    from ichor.training.runs import parse_run

    manifests = parse_run(pretrain_run(spec, cfg)).data.init_args.manifests
    return set(read_manifests(manifests)["subject"].astype(str))


def check_pool(pool: set[str], task: TaskSpec, rows: pd.DataFrame) -> None:
    """The paper's regime: the unlabelled pre-training pool and a labelled cohort share no subject."""
    shared = sorted(set(rows["subject"].astype(str)) & pool)
    if shared:
        raise ValueError(
            f"task {task.name}: {len(shared)} labelled subject(s) are also in the pre-training pool "
            f"({', '.join(shared[:5])}{' ...' if len(shared) > 5 else ''}); pre-train on other people "
            "(e.g. `ichor synth --first-study`), or the benchmark measures memory, not transfer"
        )


def _epochs(cfg: BenchmarkConfig, stage: str) -> dict:
    return {"trainer": {"max_epochs": cfg.epochs[stage]}} if stage in cfg.epochs else {}


def pretrain_run(spec: PretrainSpec, cfg: BenchmarkConfig) -> Run:
    """One method's pre-training: its config(s), the benchmark's overrides, its epochs, its own overrides."""
    from ichor.training.runs import Run

    return Run.of(spec.config, cfg.overrides, cfg.pretrain_overrides, _epochs(cfg, "pretrain"), spec.overrides)


def task_run(task: TaskSpec, mode: str, encoder: Path, cfg: BenchmarkConfig) -> Run:
    """One downstream run (without its split file).

    ``attentive_probe`` is the task's linear-probe mode (frozen encoder) read out by attentive pooling.
    """
    from ichor.training.runs import Run

    task_mode, pooling = ("linear_probe", {"pooling": "attentive"}) if mode == "attentive_probe" else (mode, {})
    model = {"encoder": str(encoder), "mode": task_mode, **pooling, "head": task.head}
    data: dict = {"target": task.target}
    if task.target_values is not None:
        data["target_values"] = [str(v) for v in task.target_values]
    return Run.of(
        task.config,
        cfg.overrides,
        cfg.task_overrides,
        _epochs(cfg, "finetune" if mode in ("attentive_probe", "lora") else mode),
        {"model": {"init_args": model}, "data": {"init_args": data}},
    )


def task_setup(task: TaskSpec, encoder: Path, cfg: BenchmarkConfig) -> tuple[pd.DataFrame, IchorCLI]:
    """The task's labelled manifest rows (as its config's datamodule reads them) and its parsed config."""
    from ichor.data.manifest import read_manifests
    from ichor.training.runs import IchorCLI

    base = IchorCLI(args=task_run(task, "finetune", encoder, cfg), run=False)
    rows = read_manifests(base.datamodule.hparams.manifests)
    rows = rows.loc[labelled_rows(rows, task.target, task.target_values)].reset_index(drop=True)
    return rows, base


def encoder_features(encoder: Path, rows: pd.DataFrame, base: IchorCLI, probe: dict) -> pd.DataFrame:
    """Frozen, pooled features of every row's scan (indexed by CBF path), harmonised as ``base``'s data.

    ``probe`` chooses the features (``pooling``, ``blocks``, ``regions``: the config's ``probe``).

    Every row must have its features: the methods are compared on identical scans, so a scan
    the datamodule could not use stops the benchmark with its manifest row and file named.
    """
    import torch

    from ichor.evaluation.features import embed_scans

    data = base.datamodule.hparams
    table = embed_scans(
        str(encoder),
        list(data.manifests),
        batch_size=data.batch_size,
        pooling=probe.get("pooling", base.model.hparams.pooling),
        blocks=probe.get("blocks", 1),
        regions=probe.get("regions", 2),
        cache_dir=data.cache_dir,
        num_workers=data.num_workers,
        on_bad_scan=data.on_bad_scan,
        device="cuda" if torch.cuda.is_available() else "cpu",
        progress=False,
    )
    features = table.drop_duplicates("path").set_index("path").filter(regex=r"^f\d+$")
    missing = rows.loc[~rows["path"].isin(features.index)]
    if len(missing):
        first = missing.iloc[0]
        raise ValueError(
            f"{first['manifest']} row {first['row']} ({first['path']}): no encoder features "
            f"({len(missing)} scan(s) in all); the benchmark compares methods on the same scans"
        )
    return features


def plan(
    cfg: BenchmarkConfig, task: TaskSpec, rows: pd.DataFrame, seed: int, pooled: bool = False
) -> dict[float, list[Fold]]:
    """Budget -> folds for one seed's label draw; every method sees exactly these split files.

    ``pooled``: subject-grouped folds across the studies, as many as there are studies, instead
    of the config's folds (the reference a held-out-study result is compared with).
    """
    n_folds = int(rows["study"].nunique()) if pooled else cfg.folds
    folds = subject_folds(rows, task.target, n_folds, cfg.by_study and not pooled, cfg.val_fraction, cfg.seed)
    return {budget: [budget_fold(f, rows, task.target, budget, seed) for f in folds] for budget in cfg.budgets}


def run_benchmark(cfg: BenchmarkConfig, out: str | os.PathLike) -> pd.DataFrame:
    """Run everything ``cfg`` describes under ``out``; returns one row per run, fold and seed (also written as CSV)."""
    from ichor.benchmark.report import write_report
    from ichor.models.hub import resolve

    out = Path(out)
    pool = set().union(*(pool_subjects(spec, cfg) for spec in cfg.pretrain.values()))
    encoders = {method: pretrain(method, spec, cfg, out) for method, spec in cfg.pretrain.items()}
    encoders.update({method: resolve(source) for method, source in cfg.encoders.items()})  # used as they are
    architecture = next(iter(encoders.values()))  # scratch only borrows its architecture
    trained = [
        (method, mode, encoder) for method, encoder in encoders.items() for mode in cfg.modes if mode != "linear_probe"
    ]  # Lightning runs; the linear probe is a linear model
    trained += [(SCRATCH, SCRATCH, architecture)] if cfg.scratch else []
    results: list[dict] = []
    pooled: list[dict] = []
    for task in cfg.tasks:
        rows, base = task_setup(task, architecture, cfg)
        check_pool(pool, task, rows)
        linear = {
            (method, "linear_probe"): encoder_features(encoder, rows, base, cfg.probe)
            for method, encoder in encoders.items()
            if "linear_probe" in cfg.modes
        }
        if cfg.baseline:
            linear[BASELINE, "baseline"] = regional_features(rows, base.datamodule.hparams.volume)
        for seed in cfg.seeds:
            budgets = plan(cfg, task, rows, seed)
            results += linear_results(linear, rows, budgets, task, seed)
            if cfg.by_study:  # the same linear models on subject folds that mix the studies
                pooled += linear_results(linear, rows, plan(cfg, task, rows, seed, pooled=True), task, seed)
            if seed == cfg.seeds[0]:
                results += trained_results(task, trained, budgets, cfg, out, seed)
    table = pd.DataFrame(results)
    write_report(table, cfg, out, online_probe_values(out, list(cfg.pretrain)), pd.DataFrame(pooled))
    return table


def trained_results(
    task: TaskSpec, trained: list, budgets: dict[float, list[Fold]], cfg: BenchmarkConfig, out: Path, seed: int
) -> list[dict]:
    """The Lightning runs (attentive probe, fine-tuning, scratch) of one task at the trained budgets."""
    results = []
    total, done = sum(len(budgets[b]) for b in cfg.trained_budgets) * len(trained), 0
    for budget in cfg.trained_budgets:
        for method, mode, encoder in trained:
            folder = out / task.name / method / mode / f"budget-{budget:g}"
            for fold in budgets[budget]:
                done += 1
                log.info(
                    "benchmark: %s %s %s budget %g %s (run %d/%d of this task)",
                    task.name,
                    method,
                    mode,
                    budget,
                    fold.name,
                    done,
                    total,
                )
                result = resumable_fold(task_run(task, mode, encoder, cfg), fold, folder)
                row = {"task": task.name, "method": method, "mode": mode, "budget": budget, "seed": seed}
                results.append({**row, **result})
    return results


def linear_results(
    linear: dict[tuple[str, str], pd.DataFrame],
    rows: pd.DataFrame,
    budgets: dict[float, list[Fold]],
    task: TaskSpec,
    seed: int,
) -> list[dict]:
    """Every linear model (probe features, regional baseline) on every budget and fold of one label draw."""
    return [
        {"task": task.name, "method": method, "mode": mode, "budget": budget, "seed": seed}
        | linear_result(features, rows, fold, task, seed)
        for budget, folds in budgets.items()
        for (method, mode), features in linear.items()
        for fold in folds
    ]


def linear_result(features: pd.DataFrame, rows: pd.DataFrame, fold: Fold, task: TaskSpec, seed: int) -> dict:
    """One fold of a linear model on per-scan features: fitted on its training scans, scored on its test scans."""
    split = rows["subject"].map(fold.splits.set_index("subject")["split"])
    scores = fit_and_score(
        features, rows.loc[split == "train"], rows.loc[split == "test"], task.target, task.is_classification, seed
    )
    return {"fold": fold.name, **fold.counts(), **scores}


def resumable_fold(run: Run, fold: Fold, folder: Path) -> dict:
    """``run_fold``, or the result it recorded before for the same run and split."""
    record = folder / fold.name / RESULT_FILE
    key = {"run": run.record(), "splits": fold.splits.to_dict("records")}
    if record.is_file():
        saved = json.loads(record.read_text())
        if {k: saved.get(k) for k in key} == key:
            log.info("benchmark: reusing %s", record)
            return saved["result"]
    result = run_fold(run, fold, folder)
    write_text(record, json.dumps({**key, "result": result}, indent=1))
    return result
