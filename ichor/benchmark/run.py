"""Run a benchmark: pre-train each method once, then every task x method x mode x budget x fold.

Pre-training goes through the method's own config (``IchorCLI`` fit), and its last checkpoint
is exported with ``ichor.models.weights.export_encoder``; the config's ``encoders`` (imported
brain encoders, shared exports) join them as they are. The folds are planned once per task
(subject-grouped, stratified, or one study held out at a time) and are the same for every
method, so methods are compared on identical test subjects. A label budget keeps a stratified
fraction of each fold's training subjects (validation and test subjects are unchanged).

``linear_probe`` (one per probe-feature candidate), the regional-mean floor and the oracle ceiling
fit one linear model per fold on per-scan features (frozen encoder embeddings, regional mean CBF,
the oracle features ``ichor synth`` records); ``attentive_probe``, ``finetune``, ``lora`` and
``scratch`` are ``ichor.downstream.cv.run_fold`` Lightning runs on a split file, for the first
``trained_draws`` label draws.

Every task runs twice, by the same protocol: on the selection cohort (``selection``), where each
method's mode and probe features are chosen, then on the benchmark's cohorts, whose numbers never
choose anything. With a second compute rule (``compute``), every method is pre-trained again and
its linear models run on both cohorts (the second table).

Everything finished is kept under OUT: an encoder exported by the same pre-training run is reused
(an interrupted pre-training resumes from its last checkpoint), and so is a fine-tuning run whose
``result.json`` records the same run and split; "the same" is by content (``reuse.run_key``: the
composed config's values, the manifests' rows, the data files' content keys, never their paths), so
an interrupted benchmark restarts where it stopped and a changed config or manifest runs again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ichor.benchmark.baseline import oracle_features, regional_features
from ichor.benchmark.config import BenchmarkConfig, TaskSpec
from ichor.benchmark.preflight import check_before_pretraining, unmet_budget
from ichor.benchmark.pretraining import pretrain, pretraining_records
from ichor.benchmark.reuse import architecture_key, changed_keys, features_key, path_key, run_key
from ichor.data.schema import label_strata, labelled_rows
from ichor.downstream.cv import Fold, run_fold, subject_folds
from ichor.evaluation.linear import fit_and_score
from ichor.io import write_csv, write_text

if TYPE_CHECKING:
    from ichor.training.runs import IchorCLI, Run

log = logging.getLogger(__name__)

SCRATCH = "scratch"
BASELINE = "regional_mean"
ORACLE = "oracle"
RESULT_FILE = "result.json"
FEATURES_DIR = "features"  # per-scan encoder features, by content (``stored_features``)


@dataclass(frozen=True)
class Cohort:
    """Where a task is evaluated: the benchmark's own cohorts (``held_out``) or the ``selection`` cohort.

    ``overrides`` replace the downstream runs' manifests (none for the benchmark's own);
    ``folder`` holds its Lightning runs.
    """

    name: str
    folder: Path
    overrides: dict = field(default_factory=dict)


def cohorts(cfg: BenchmarkConfig, out: Path) -> list[Cohort]:
    """The selection cohort (when the config names one) first, then the benchmark's cohorts."""
    held_out = Cohort("held_out", out)
    if cfg.selection is None:
        return [held_out]
    manifests = {"data": {"init_args": {"manifests": list(cfg.selection["manifests"])}}}
    return [Cohort("selection", out / "selection", manifests), held_out]


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


def _epochs(cfg: BenchmarkConfig, stage: str) -> dict:
    return {"trainer": {"max_epochs": cfg.epochs[stage]}} if stage in cfg.epochs else {}


def task_run(task: TaskSpec, mode: str, encoder: Path, cfg: BenchmarkConfig, cohort: dict | None = None) -> Run:
    """One downstream run (without its split file); ``cohort``: the selection cohort's manifests.

    ``attentive_probe`` is the task's linear-probe mode (frozen encoder) read out by attentive pooling.
    """
    from ichor.training.runs import Run

    task_mode, pooling = ("linear_probe", {"pooling": "attentive"}) if mode == "attentive_probe" else (mode, {})
    model = {"encoder": str(encoder), "mode": task_mode, **pooling, "head": task.head, "global_cbf": cfg.global_cbf}
    data: dict = {"target": task.target}
    if task.target_values is not None:
        data["target_values"] = [str(v) for v in task.target_values]
    return Run.of(
        task.config,
        cfg.overrides,
        cfg.task_overrides,
        cohort or {},
        _epochs(cfg, "finetune" if mode in ("attentive_probe", "lora") else mode),
        {"model": {"init_args": model}, "data": {"init_args": data}},
    )


def task_setup(
    task: TaskSpec, encoder: Path, cfg: BenchmarkConfig, cohort: dict | None = None
) -> tuple[pd.DataFrame, IchorCLI]:
    """The task's labelled manifest rows (as its config's datamodule reads them) and its parsed config."""
    from ichor.data.manifest import read_manifests
    from ichor.training.runs import IchorCLI

    base = IchorCLI(args=task_run(task, "finetune", encoder, cfg, cohort), run=False)
    rows = read_manifests(base.datamodule.hparams.manifests)
    rows = rows.loc[labelled_rows(rows, task.target, task.target_values)].reset_index(drop=True)
    return rows, base


def probe_settings(probe: dict, base: IchorCLI) -> dict:
    """What one of the config's ``probe`` candidates reads: ``pooling`` (the task config's by default), ``blocks``, ``regions``."""
    default = base.model.hparams.pooling
    return {
        "pooling": probe.get("pooling", default),
        "blocks": probe.get("blocks", 1),
        "regions": probe.get("regions", 2),
    }


def encoder_features(encoder: Path, rows: pd.DataFrame, base: IchorCLI, probe: dict) -> pd.DataFrame:
    """Frozen, pooled features of every scan of ``base``'s manifests (indexed by CBF path), harmonised as its
    data, and the scans' global CBF scalars (a linear model reads them or not: ``feature_columns``).

    ``probe`` chooses the features (``probe_settings``: one of the config's ``probe``).

    Every row must have its features: the methods are compared on identical scans, so a scan
    the datamodule could not use stops the benchmark with its manifest row and file named.
    """
    import torch

    from ichor.evaluation.features import embed_scans, feature_columns

    data = base.datamodule.hparams
    table = embed_scans(
        str(encoder),
        list(data.manifests),
        batch_size=data.batch_size,
        **probe_settings(probe, base),
        cache_dir=data.cache_dir,
        num_workers=data.num_workers,
        on_bad_scan=data.on_bad_scan,
        device="cuda" if torch.cuda.is_available() else "cpu",
        progress=False,
    )
    features = feature_columns(table.drop_duplicates("path").set_index("path"), global_cbf=True)
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
    """Run everything ``cfg`` describes under ``out``; returns the main comparison's held-out results,
    one row per run, fold and draw (also written as CSV, with the report)."""
    from ichor.benchmark.report import Outcome, write_report

    out = Path(out)
    check_before_pretraining(cfg, cohorts(cfg, out))
    outcomes, features = {}, {}  # per-scan features, shared by the compute rules (keyed by encoder)
    for index, compute in enumerate(cfg.compute):
        encoders = pretrained_encoders(cfg, out, compute)
        # A second compute rule runs the linear models only, at the Lightning runs' draws, into its own folder.
        second = replace(cfg, seeds=cfg.seeds[: cfg.trained_draws])
        args = (cfg, out, encoders, True) if index == 0 else (second, out / compute, encoders, False)
        outcomes[compute] = Outcome(
            *evaluate_all(*args, features), pretraining_records(out, list(cfg.pretrain), compute)
        )
    write_report(outcomes, cfg, out)
    return outcomes[cfg.compute[0]].results


def pretrained_encoders(cfg: BenchmarkConfig, out: Path, compute: str) -> dict[str, Path]:
    """Every method's encoder under one compute rule, and the config's ``encoders`` as they are."""
    from ichor.models.hub import resolve

    encoders = {method: pretrain(method, spec, cfg, out, compute) for method, spec in cfg.pretrain.items()}
    return encoders | {method: resolve(source) for method, source in cfg.encoders.items()}


def evaluate_all(
    cfg: BenchmarkConfig, out: Path, encoders: dict[str, Path], trained: bool, features: dict
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Every task on every cohort: (held-out results, selection results, pooled-fold results).

    ``features``: per-scan features already computed (they do not depend on the task), filled as it goes.
    """
    tables: dict[str, list[dict]] = {"held_out": [], "selection": [], "pooled": []}
    for task in cfg.tasks:
        for cohort in cohorts(cfg, out):
            results, pooled = evaluate(task, cohort, encoders, cfg, features, trained)
            tables[cohort.name] += results
            tables["pooled"] += pooled
    return pd.DataFrame(tables["held_out"]), pd.DataFrame(tables["selection"]), pd.DataFrame(tables["pooled"])


def evaluate(
    task: TaskSpec,
    cohort: Cohort,
    encoders: dict[str, Path],
    cfg: BenchmarkConfig,
    features: dict,
    trained: bool = True,
) -> tuple[list[dict], list[dict]]:
    """One task on one cohort: every linear model at every draw, the Lightning runs at the first
    ``trained_draws``; and, on held-out studies, the linear models on pooled subject folds."""
    architecture = next(iter(encoders.values()))  # scratch only borrows its architecture
    rows, base = task_setup(task, architecture, cfg, cohort.overrides)
    linear = linear_features(cohort, encoders, rows, base, cfg, features)
    # Scratch has no mode to choose: it runs on the benchmark's cohorts only.
    runs = trained_runs(encoders, cfg, cfg.scratch and cohort.name == "held_out") if trained else []
    results: list[dict] = []
    pooled: list[dict] = []
    for draw, seed in enumerate(cfg.seeds):
        budgets = plan(cfg, task, rows, seed)
        # All labels is one draw (the whole fold): a linear model there is fitted once, not once per draw.
        drawn = {budget: folds for budget, folds in budgets.items() if draw == 0 or budget != 1}
        results += linear_results(linear, rows, drawn, task, seed, cfg.linear_workers)
        if draw < cfg.trained_draws:
            results += trained_results(task, runs, rows, budgets, cfg, cohort, seed)
        if cfg.by_study and cohort.name == "held_out" and draw < cfg.trained_draws:  # the site gap: pooled folds
            pooled += linear_results(
                linear, rows, plan(cfg, task, rows, seed, pooled=True), task, seed, cfg.linear_workers
            )
    return results, pooled


def trained_runs(encoders: dict[str, Path], cfg: BenchmarkConfig, scratch: bool) -> list[tuple[str, str, Path]]:
    """(method, mode, encoder) of every Lightning run; the linear probe is a linear model."""
    runs = [
        (method, mode, encoder) for method, encoder in encoders.items() for mode in cfg.modes if mode != "linear_probe"
    ]
    return runs + ([(SCRATCH, SCRATCH, next(iter(encoders.values())))] if scratch else [])


def linear_features(
    cohort: Cohort, encoders: dict[str, Path], rows: pd.DataFrame, base: IchorCLI, cfg: BenchmarkConfig, memo: dict
) -> dict[tuple[str, str], pd.DataFrame]:
    """(method, mode) -> per-scan features of every linear model: each probe candidate of each encoder,
    the regional-mean floor and the oracle ceiling, each with the same global CBF scalars when the config
    says so. ``memo`` keeps them across tasks and compute rules (by cohort, model and encoder): a task's
    scans that are not there yet are the only ones read."""
    wanted: dict[tuple[str, str], tuple[object, Callable[[pd.DataFrame], pd.DataFrame]]] = {}
    if "linear_probe" in cfg.modes:
        for method, encoder in encoders.items():
            for probe in cfg.probe:
                stored = partial(stored_features, encoder=encoder, base=base, probe=probe, folder=cohort.folder)
                embed = partial(_read_by_probe, features=stored, global_cbf=cfg.global_cbf)
                wanted[method, cfg.probe_mode(probe)] = (str(encoder), embed)
    scan_models: dict[tuple[str, str], Callable[[pd.DataFrame], pd.DataFrame]] = {}
    if cfg.baseline:
        scan_models[BASELINE, "baseline"] = partial(regional_features, volume=base.datamodule.hparams.volume)
    if cfg.oracle:
        scan_models[ORACLE, ORACLE] = oracle_features
    for key, compute in scan_models.items():
        wanted[key] = (None, partial(_with_global_cbf, compute=compute, base=base) if cfg.global_cbf else compute)
    linear = {}
    for key, (source, compute) in wanted.items():
        known = memo.get((cohort.name, key, source))
        missing = rows if known is None else rows.loc[~rows["path"].isin(known.index)]
        if len(missing):
            known = pd.concat([known, compute(missing)]) if known is not None else compute(missing)
            memo[cohort.name, key, source] = known = known.loc[~known.index.duplicated()]
        linear[key] = known
    return linear


def _with_global_cbf(
    rows: pd.DataFrame, compute: Callable[[pd.DataFrame], pd.DataFrame], base: IchorCLI
) -> pd.DataFrame:
    """``compute``'s per-scan features and the global CBF scalars the encoders' probes receive (same cache values)."""
    from ichor.evaluation.features import global_cbf_table

    data = base.datamodule
    manifests = sorted(rows["manifest"].unique())
    scalars = global_cbf_table(data.harmonisation_settings(), manifests, cache_dir=data.hparams.cache_dir)
    features = compute(rows)  # the oracle records its own log brain mean: the shared one replaces it
    return features.drop(columns=scalars.columns, errors="ignore").join(
        scalars.loc[features.index], validate="one_to_one"
    )


def stored_features(rows: pd.DataFrame, encoder: Path, base: IchorCLI, probe: dict, folder: Path) -> pd.DataFrame:
    """``encoder_features`` of ``rows`` (indexed by path), kept in ``folder/features/`` by content and reused.

    The file is named by the encoder's files and the probe settings (``reuse.features_key``), its rows
    by each scan's content key: a later run with the same encoder and probe reads the scans it holds,
    wherever they now live, and embeds again only when a scan is not there.
    """
    settings = probe_settings(probe, base)
    content = Path(base.datamodule.hparams.cache_dir) / "content-keys"
    store = folder / FEATURES_DIR / f"{features_key(encoder, settings)}.csv"
    keys = [str(path_key(path, content)) for path in rows["path"]]
    saved = pd.read_csv(store, index_col=0) if store.is_file() else pd.DataFrame()
    if not set(keys) <= set(saved.index):
        embedded = encoder_features(encoder, rows, base, probe).astype("float64")  # as the CSV reads back, exactly
        embedded.index = [str(path_key(path, content)) for path in embedded.index]
        saved = pd.concat([saved, embedded])
        saved = saved.loc[~saved.index.duplicated(keep="last")]
        write_csv(saved.rename_axis("content_key"), store, index=True)
    else:
        log.info("benchmark: reusing the features of %d scans in %s", len(keys), store)
    return saved.loc[keys].set_axis(rows["path"].to_numpy())


def _read_by_probe(
    rows: pd.DataFrame, features: Callable[[pd.DataFrame], pd.DataFrame], global_cbf: bool
) -> pd.DataFrame:
    """The columns a linear probe reads of an encoder's stored features: with or without the global CBF scalars."""
    from ichor.evaluation.features import feature_columns

    return feature_columns(features(rows), global_cbf)


def trained_results(
    task: TaskSpec,
    trained: list,
    rows: pd.DataFrame,
    budgets: dict[float, list[Fold]],
    cfg: BenchmarkConfig,
    cohort: Cohort,
    seed: int,
) -> list[dict]:
    """The Lightning runs (attentive probe, fine-tuning, LoRA, scratch) of one task and draw at the trained budgets."""
    results = []
    total, done = sum(len(budgets[b]) for b in cfg.trained_budgets) * len(trained), 0
    for budget in cfg.trained_budgets:
        for method, mode, encoder in trained:
            folder = cohort.folder / task.name / method / mode / f"budget-{budget:g}" / f"draw-{seed}"
            for fold in budgets[budget]:
                done += 1
                log.info(
                    "benchmark: %s %s %s %s budget %g draw %d %s (run %d/%d)",
                    cohort.name,
                    task.name,
                    method,
                    mode,
                    budget,
                    seed,
                    fold.name,
                    done,
                    total,
                )
                run = task_run(task, mode, encoder, cfg, cohort.overrides)
                borrowed = architecture_key(encoder) if mode == SCRATCH else None
                result = resumable_fold(run, fold, folder, borrowed)
                row = {"task": task.name, "method": method, "mode": mode, "budget": budget, "seed": seed}
                results.append({**row, **result, "budget_met": not unmet_budget(fold, rows, task.target, budget)})
    return results


def linear_results(
    linear: dict[tuple[str, str], pd.DataFrame],
    rows: pd.DataFrame,
    budgets: dict[float, list[Fold]],
    task: TaskSpec,
    seed: int,
    workers: int = 0,
) -> list[dict]:
    """Every linear model (probe features, floor, ceiling) on every budget and fold of one label draw.

    ``workers`` processes fit them (0: this process), each with one BLAS thread: the models are
    small, and threads only contend (a fit takes several times longer with them).
    """
    keys, jobs = [], []
    for budget, folds in budgets.items():
        for (method, mode), features in linear.items():
            for fold in folds:
                keys.append({"task": task.name, "method": method, "mode": mode, "budget": budget, "seed": seed})
                keys[-1] |= {"fold": fold.name, **fold.counts()}
                keys[-1]["budget_met"] = not unmet_budget(fold, rows, task.target, budget)
                jobs.append(linear_job(features, rows, fold, task, seed))
    return [key | scores for key, scores in zip(keys, fit_all(jobs, workers))]


def linear_job(features: pd.DataFrame, rows: pd.DataFrame, fold: Fold, task: TaskSpec, seed: int) -> tuple:
    """The arguments of one fold's ``fit_and_score``: its own scans' features only (small to send to a worker)."""
    split = rows["subject"].map(fold.splits.set_index("subject")["split"])
    train, test = rows.loc[split == "train"], rows.loc[split == "test"]
    used = features.loc[pd.concat([train["path"], test["path"]]).unique()]
    return used, train, test, task.target, task.is_classification, seed


def fit_all(jobs: list[tuple], workers: int) -> list[dict]:
    """``fit_and_score`` of every job, in order, in ``workers`` single-threaded processes (0: here, one thread)."""
    if workers == 0 or len(jobs) < 2:
        return [_fit_single_threaded(job) for job in jobs]
    import sys
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from ichor.data.workers import single_threaded

    context = get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=single_threaded, initargs=(os.getpid(),)) as pool:
        return list(pool.map(_fit_single_threaded, jobs, chunksize=max(1, len(jobs) // (4 * workers))))


def _fit_single_threaded(job: tuple) -> dict:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return fit_and_score(*job)


def resumable_fold(run: Run, fold: Fold, folder: Path, encoder_key: dict | None = None) -> dict:
    """``run_fold``, or the result it recorded before for the same run, by content (``reuse.run_key``), and split;
    ``encoder_key`` replaces the encoder's files in the key (a scratch run's ``reuse.architecture_key``)."""
    record = folder / fold.name / RESULT_FILE
    key = {"key": run_key(run), "splits": fold.splits.to_dict("records")}
    if encoder_key is not None:
        key["key"]["model"]["init_args"]["encoder"] = encoder_key
    if record.is_file():
        saved = json.loads(record.read_text())
        if {k: saved.get(k) for k in key} == key:
            log.info("benchmark: reusing %s (same config, manifests, data and split)", record)
            return saved["result"]
        log.info("benchmark: %s changed since %s: running it again", _fold_changes(saved, key), record)
    result = run_fold(run, fold, folder)
    write_text(record, json.dumps({"run": run.record(), **key, "result": result}, indent=1))
    return result


def _fold_changes(saved: dict, key: dict) -> str:
    if saved.get("key") is None:
        return "the record (paths only, an earlier ICHOR)"
    names = changed_keys(saved["key"], key["key"]) + (["the split"] if saved.get("splits") != key["splits"] else [])
    return ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
