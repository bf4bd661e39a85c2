"""Pre-train each method once per compute rule, and record what it cost and what its online probe saw.

Two rules make methods comparable (``BenchmarkConfig.compute``):

- ``equal_time``: every method gets the same wall-clock budget on the same machine (the Trainer's
  ``max_time``), its schedule spanning ``epochs.pretrain_time_cap`` epochs; compute, not epochs,
  is what a user pays, and an MAE encodes only its visible patches, so an epoch of it is cheaper;
- ``equal_epochs``: every method makes ``epochs.pretrain`` passes over the pool.

Beside each exported encoder the benchmark keeps ``online_probe.json`` (the online probe's first
and last scalars, ``initial`` and ``latest``, and ``change_sd``, the spread of their paired change
over label draws: whether pre-training beat its own initialisation beyond it; ``reference``, the
same label probe on the global CBF scalars alone, what an encoder must add to) and ``compute.json``
(epochs reached, minutes, median scans/s and data-wait fraction over the training steps, read from the pre-trainer's own per-step ``train/scans_per_s`` and ``train/data_wait_fraction``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from lightning.pytorch import Callback

from ichor.benchmark.config import BenchmarkConfig, PretrainSpec
from ichor.benchmark.reuse import changed_keys, run_key
from ichor.io import write_text

if TYPE_CHECKING:
    from ichor.training.runs import Run

log = logging.getLogger(__name__)

ONLINE_PROBE_FILE = "online_probe.json"  # the online probe's first and last scalars, beside the encoder
COMPUTE_FILE = "compute.json"  # what the pre-training cost, beside the encoder
PRETRAIN_RECORD = "pretrain_args.json"  # the run the encoder beside it was pre-trained with
THROUGHPUT = ("train/scans_per_s", "train/data_wait_fraction")


class ThroughputRecorder(Callback):
    """Collects the pre-trainer's per-step throughput (its ``throughput``), so the record holds their median, not the last step's.

    A step's values are set in its batch-end hook, so each is read at the next step's start (or at
    the end of training), once: a value already read is not counted again.
    """

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {name: [] for name in THROUGHPUT}
        self.started = time.perf_counter()
        self._read: dict[str, float] | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.started = time.perf_counter()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._collect(pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._collect(pl_module)

    def _collect(self, pl_module: Any) -> None:
        step = pl_module.throughput
        if step and step is not self._read:
            for name in THROUGHPUT:
                self.values[name].append(step[name])
            self._read = step

    def record(self, trainer: Any) -> dict[str, Any]:
        """Epochs, steps, minutes, median throughput, and what stopped the run: ``max_epochs`` (its
        schedule's end) or ``clock`` (``max_time``, or an interruption)."""
        medians = {name: float(np.median(v)) if v else float("nan") for name, v in self.values.items()}
        cap = trainer.max_epochs
        return {
            "epochs": int(trainer.current_epoch),
            "steps": int(trainer.global_step),
            "minutes": (time.perf_counter() - self.started) / 60,
            "scans_per_s": medians["train/scans_per_s"],
            "data_wait_fraction": medians["train/data_wait_fraction"],
            "stopped_by": "max_epochs" if cap is not None and 0 <= cap <= trainer.current_epoch else "clock",
        }


def pretrain_folder(out: Path, compute: str, method: str) -> Path:
    """Where a method's pre-training under a compute rule lives (equal epochs keeps the historical ``pretrain/``)."""
    return out / ("pretrain" if compute == "equal_epochs" else f"pretrain-{compute.replace('_', '-')}") / method


def compute_overrides(cfg: BenchmarkConfig, compute: str) -> dict:
    """The Trainer limits of one compute rule: a wall-clock ``max_time`` (DD:HH:MM:SS) or ``max_epochs``."""
    if compute == "equal_time":
        seconds = round(float(cfg.pretrain_budget_minutes or 0) * 60)
        clock = f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        return {"trainer": {"max_time": clock, "max_epochs": cfg.epochs["pretrain_time_cap"]}}
    return {"trainer": {"max_epochs": cfg.epochs["pretrain"]}} if "pretrain" in cfg.epochs else {}


def pretrain_run(spec: PretrainSpec, cfg: BenchmarkConfig, compute: str = "equal_epochs") -> Run:
    """One method's pre-training: its config(s), the benchmark's overrides, the compute rule, its own overrides."""
    from ichor.training.runs import Run

    return Run.of(spec.config, cfg.overrides, cfg.pretrain_overrides, compute_overrides(cfg, compute), spec.overrides)


def pretrain(method: str, spec: PretrainSpec, cfg: BenchmarkConfig, out: Path, compute: str = "equal_epochs") -> Path:
    """Pre-train ``method`` under ``compute`` and export its encoder; returns the export folder.

    An export made by the same run, by content (``reuse.run_key``: config values, manifests' rows,
    data files), is reused, and an interrupted pre-training of it resumes from its last checkpoint;
    a changed config value, manifest row or file pre-trains again, saying what changed.
    """
    from ichor.models.weights import METADATA_FILE, export_encoder
    from ichor.training.runs import build_run

    folder = pretrain_folder(out, compute, method)
    encoder = folder / "encoder"
    run = pretrain_run(spec, cfg, compute)
    key = run_key(run)
    record = folder / PRETRAIN_RECORD
    saved = json.loads(record.read_text()) if record.is_file() else {}
    recorded = saved.get("key")
    if (encoder / METADATA_FILE).is_file():
        if recorded == key:
            log.info("benchmark: reusing the %s encoder in %s (same config, manifests and data)", method, encoder)
            return encoder
        if not saved:
            message = "benchmark: reusing the %s encoder in %s (made by an earlier ICHOR: no arguments recorded)"
            log.warning(message + "; delete %s to pre-train it again", method, encoder, folder)
            return encoder
        log.warning("benchmark: %s: pre-training %s again", _changes(recorded, key, encoder), method)
    last = folder / "checkpoints" / "last.ckpt"
    resume = last if recorded == key and last.is_file() else None
    log.info("benchmark: pre-training %s (%s, %s)%s", method, spec.config[-1], compute, ", resuming" if resume else "")
    write_text(record, json.dumps({"run": run.record(), "key": key}, indent=1))
    cli = build_run(run, folder)
    trainer, recorder = cli.trainer, ThroughputRecorder()
    trainer.callbacks.append(recorder)
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
    callback = trainer.checkpoint_callback
    # A resumed run that had already finished saves nothing new: its last checkpoint is the result.
    checkpoint = (callback and (callback.last_model_path or callback.best_model_path)) or resume
    if not checkpoint:
        raise ValueError(f"pre-training config {spec.config[-1]} ({method}) saved no checkpoint")
    write_text(folder / ONLINE_PROBE_FILE, json.dumps(online_probe_record(trainer), indent=1))
    cost = recorder.record(trainer)
    if compute == "equal_time" and cost["stopped_by"] == "max_epochs":
        log.warning(
            "benchmark: %s reached its schedule's end (%d epochs) after %.1f of its %g minutes, before the clock: "
            "it had less compute than the others; raise epochs.pretrain_time_cap so that no method reaches it",
            method,
            cost["epochs"],
            cost["minutes"],
            cfg.pretrain_budget_minutes,
        )
    write_text(folder / COMPUTE_FILE, json.dumps(cost, indent=1))
    return export_encoder(checkpoint, encoder, overwrite=True)


def _changes(recorded: dict | None, key: dict, where: Path) -> str:
    """One line saying what changed since ``where`` was made (a record of paths only: an earlier ICHOR)."""
    if recorded is None:
        return f"{where} was recorded by its config paths only (an earlier ICHOR), not by content"
    names = changed_keys(recorded, key)
    return f"{', '.join(names[:4])}{' ...' if len(names) > 4 else ''} changed since {where}"


def online_probe_record(trainer: Any) -> dict[str, dict[str, float]]:
    """The online probe's first and last scalars, (over more than one label draw) the standard deviation
    of each scalar's paired change across draws, and its global-CBF-alone reference (empty without the callback)."""
    from ichor.evaluation.online_probe import PREFIX, OnlineProbe, paired_gain

    probe = next((c for c in trainer.callbacks if isinstance(c, OnlineProbe)), None)
    if probe is None:
        return {"initial": {}, "latest": {}, "change_sd": {}, "reference": {}}
    spread = {}
    if len(probe.latest_draws) > 1 and len(probe.initial_draws) == len(probe.latest_draws):
        spread = {
            f"{PREFIX}{name}": paired_gain(probe.initial_draws, probe.latest_draws, name)[1]
            for name in probe.latest_draws[0]
        }
    return {
        "initial": dict(probe.initial),
        "latest": dict(probe.latest),
        "change_sd": spread,
        "reference": probe.reference,
    }


def pretraining_records(out: Path, methods: list[str], compute: str) -> pd.DataFrame:
    """One row per pre-trained method: epochs, minutes, scans/s, data wait, and each online-probe scalar
    at initialisation, at the end and their change, with the change's spread over label draws, and the
    label probe on the global CBF scalars alone (blank where the run recorded none)."""
    rows = []
    for method in methods:
        folder = pretrain_folder(out, compute, method)
        row: dict[str, Any] = {"method": method, "compute": compute}
        if (folder / COMPUTE_FILE).is_file():
            row |= json.loads((folder / COMPUTE_FILE).read_text())
        probe = json.loads((folder / ONLINE_PROBE_FILE).read_text()) if (folder / ONLINE_PROBE_FILE).is_file() else {}
        initial, latest, spread = probe.get("initial", {}), probe.get("latest", {}), probe.get("change_sd", {})
        for name in (name for name in latest if not name.endswith("_sd")):  # a draw's spread is in `change sd`
            row[f"{name} initial"], row[f"{name} end"] = initial.get(name, float("nan")), latest[name]
            row[f"{name} change"] = latest[name] - initial.get(name, float("nan"))
            if name in spread:
                row[f"{name} change sd"] = spread[name]
        row |= probe.get("reference", {})  # the label probe on the global CBF scalars alone
        rows.append(row)
    return pd.DataFrame(rows)
