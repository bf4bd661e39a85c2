"""``OnlineProbe``: is the representation improving, not only the pretext loss falling?

A Lightning callback for any :class:`ichor.pretrain.Pretrainer` (MAE, SimCLR, Models Genesis:
it reads ``encoder_network()``). Before training, every ``every_n_epochs`` epochs (None: never in
between) and at the end (a time limit may stop a run between two probes) it embeds a small labelled probe set with the
frozen encoder (eval mode, no gradients) and logs to every logger (TensorBoard: the ``probe/``
scalars, at the training step):

- ``probe/<metric>``: the linear probe of :mod:`ichor.evaluation.linear` (regularisation by
  inner CV), cross-validated over subjects on the probe set: ``auroc`` and
  ``balanced_accuracy`` for a class label, ``mae``, ``rmse``, ``pearson``, ``spearman``, ``r2``
  for a number;
- ``probe/site_balanced_accuracy`` and ``probe/site_chance``: how well the same probe tells
  the study from the features (lower is more site-invariant), and its chance level, 1 / studies;
- ``probe/rankme``: the effective rank of the centred encoder features (Garrido et al., ICML
  2023); a collapsing representation (every scan alike) drives it towards 1. Centred: a mean
  vector that every scan shares is one large singular value, and would pass for collapse;
- ``probe/<metric>_global_cbf``, once, at the first probe (with ``global_cbf``): the same label
  probe on the global CBF scalars alone, with no encoder. It is the reading an encoder must add
  to: features that score below it cost the probe more than they give.

With ``draws`` > 1 the cross-validation is repeated with as many fold seeds (label draws): each
scalar is their mean, ``probe/<metric>_sd`` their spread. ``initial`` holds the first probe's
scalars (the encoder as initialised; kept in the checkpoint, so a resumed run still knows them)
and ``latest`` the last, ``initial_draws`` and ``latest_draws`` the same per draw: a recipe counts
only if its probe after pre-training beats its own initialisation beyond the spread of the draws
(:func:`paired_gain`). ``reference`` holds the scalars-alone reading.

The anchors are nidl's ``ModelProbingCallback`` and lightly's online linear classifier. Set it in
YAML::

    trainer:
      callbacks:
        - class_path: ichor.evaluation.online_probe.OnlineProbe
          init_args: {target: diagnosis, manifests: [data_manifests/probe], every_n_epochs: 5}

Without ``manifests`` it probes the pre-training manifests themselves (their ``target`` column):
handy for a demo, but a label the pre-training data carries is then seen by the monitor, never
by the training. The probe set is harmonised as the pre-training data is (the datamodule's
settings) and embedded on global rank 0 only; the values also enter ``trainer.callback_metrics``,
so a checkpoint can monitor ``probe/auroc``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from ichor.data.datamodule import GLOBAL_CBF_NAMES
from ichor.data.schema import labelled_rows
from ichor.evaluation.linear import INNER_FOLDS, cross_validated_scores
from ichor.evaluation.pooling import REGIONS, Pooling, check_pooling

log = logging.getLogger(__name__)

PREFIX = "probe/"


def rankme(features: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalized singular values of (N, D) features, centred."""
    features = np.asarray(features, dtype=np.float64)
    singular = np.linalg.svd(features - features.mean(axis=0), compute_uv=False)
    p = singular / max(singular.sum(), eps) + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def probe_scores(
    features: np.ndarray,
    labels: np.ndarray,
    classification: bool,
    subjects: np.ndarray,
    studies: np.ndarray,
    folds: int = INNER_FOLDS,
    seed: int = 0,
    scalars: np.ndarray | None = None,
) -> dict[str, float]:
    """The callback's scalars (without ``probe/``) for one feature matrix: label probe, site probe, RankMe.

    ``scalars`` (N, k), the global CBF scalars, join the features of the label probe as its
    covariates (kept apart: ``ichor.evaluation.linear.CovariateWeight``); the site
    probe and RankMe read the encoder's own features alone (the scalars carry each site's global
    level by design, and are not the encoder's).
    """
    probed = features if scalars is None else np.concatenate([features, scalars], axis=1)
    covariates = 0 if scalars is None else scalars.shape[1]
    scores = cross_validated_scores(probed, labels, classification, subjects, folds, seed, covariates)
    sites = np.unique(studies)
    if len(sites) > 1:
        site = cross_validated_scores(features, studies, True, subjects, folds, seed)
        scores.update(site_balanced_accuracy=site["balanced_accuracy"], site_chance=1.0 / len(sites))
    scores["rankme"] = rankme(features)
    return scores


def paired_gain(initial: list[dict[str, float]], latest: list[dict[str, float]], metric: str) -> tuple[float, float]:
    """Mean and standard deviation over label draws of ``latest - initial`` for ``metric`` (same folds at both ends)."""
    gains = np.array([end[metric] - start[metric] for start, end in zip(initial, latest, strict=True)])
    return float(gains.mean()), float(gains.std(ddof=1)) if len(gains) > 1 else 0.0


class OnlineProbe(Callback):
    """Probe the encoder during pre-training (see the module docstring).

    Args:
        target: the label column of the probe manifests.
        manifests: the probe set's manifests (or folders); None: the pre-training manifests.
        task: "classification" or "regression" of ``target``.
        target_values: the label values to keep (e.g. ``[CN, AD]``); None keeps every labelled scan.
        every_n_epochs: probe after every this many epochs (and once before training and once at
            the end); None: only before and at the end, as a benchmark under a time budget does (a
            probe mid-run takes its time out of the budget, more often for a method with short epochs).
        pooling, blocks, regions: the frozen features (:func:`ichor.evaluation.pooling.encode`).
        global_cbf: give the label probe the scans' global CBF scalars beside the features (as the
            benchmark does), which a relative or z-scored input no longer shows, and score them
            alone once (``reference``); the site probe and RankMe read the features alone.
        folds: outer and inner cross-validation folds (grouped by subject).
        draws: label draws: the cross-validation repeated with fold seeds ``seed``, ``seed + 1``, ...
        batch_size: scans per embedding batch.
        seed: seed of the folds.
    """

    def __init__(
        self,
        target: str,
        manifests: list[str] | None = None,
        task: Literal["classification", "regression"] = "classification",
        target_values: list | None = None,
        every_n_epochs: int | None = 1,
        pooling: Pooling = "brain_mean",
        blocks: int = 1,
        regions: int = REGIONS,
        global_cbf: bool = True,
        folds: int = INNER_FOLDS,
        draws: int = 1,
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        if draws < 1:
            raise ValueError(f"draws must be at least 1, got {draws}")
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(
                f"every_n_epochs must be at least 1 (or null: only before training and at the end), got {every_n_epochs}"
            )
        check_pooling(pooling)
        self.target = target
        self.manifests = manifests
        self.classification = task == "classification"
        self.target_values = target_values
        self.every_n_epochs = every_n_epochs
        self.pooling: Pooling = pooling
        self.blocks = blocks
        self.regions = regions
        self.global_cbf = global_cbf
        self.folds = folds
        self.draws = draws
        self.batch_size = batch_size
        self.seed = seed
        self._loader: DataLoader | None = None
        self._rows: pd.DataFrame | None = None
        self.initial: dict[str, float] = {}
        self.latest: dict[str, float] = {}
        self.initial_draws: list[dict[str, float]] = []
        self.latest_draws: list[dict[str, float]] = []
        self.reference: dict[str, float] = {}  # the label probe on the global CBF scalars alone
        self._probed_at: int | None = None  # the training step of the last probe

    def state_dict(self) -> dict[str, Any]:
        return {"initial": dict(self.initial), "initial_draws": list(self.initial_draws), "reference": self.reference}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initial = dict(state_dict.get("initial", {}))
        self.initial_draws = list(state_dict.get("initial_draws", []))
        self.reference = dict(state_dict.get("reference", {}))

    # ---------------------------------------------------------------- hooks
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.probe(trainer, pl_module)  # the curve's origin: the encoder as initialised (or resumed)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.probe(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The last probe is of the final weights, also when a time limit stops the run between probes."""
        if self._probed_at != trainer.global_step:
            self.probe(trainer, pl_module)

    # ---------------------------------------------------------------- probing
    def probe(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """Embed the probe set, score it and log the scalars (global rank 0); returns them (empty elsewhere)."""
        if not trainer.is_global_zero or trainer.sanity_checking:
            return {}
        from ichor.evaluation.features import embed_loader

        loader, rows = self.probe_set(trainer)
        encoder = pl_module.encoder_network()  # type: ignore[operator]
        table = embed_loader(encoder, loader, self.pooling, self.blocks, self.regions, pl_module.device)
        table = table.merge(rows[["path", self.target]], on="path", how="inner", validate="many_to_one")
        features = table.filter(regex=r"^f\d+$").to_numpy()
        scalars = table[list(GLOBAL_CBF_NAMES)].to_numpy() if self.global_cbf else None
        labels = table[self.target].astype(str if self.classification else float).to_numpy()
        subjects, studies = table["subject"].astype(str).to_numpy(), table["study"].astype(str).to_numpy()
        draws = [
            {
                name: float(value)
                for name, value in probe_scores(
                    features, labels, self.classification, subjects, studies, self.folds, seed, scalars
                ).items()
            }
            for seed in range(self.seed, self.seed + self.draws)
        ]
        metrics = {f"{PREFIX}{name}": float(np.mean([d[name] for d in draws])) for name in draws[0]}
        if self.draws > 1:
            spread = {name: float(np.std([d[name] for d in draws], ddof=1)) for name in draws[0] if name != "rankme"}
            metrics |= {f"{PREFIX}{name}_sd": value for name, value in spread.items() if name != "site_chance"}
        logged = dict(metrics)
        if scalars is not None and not self.reference:
            self.reference = self.scalars_alone(scalars, labels, subjects)
            logged |= self.reference
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in logged.items()})
        self.initial, self.initial_draws = self.initial or metrics, self.initial_draws or draws
        self.latest, self.latest_draws = metrics, draws
        self._probed_at = trainer.global_step
        return metrics

    def scalars_alone(self, scalars: np.ndarray, labels: np.ndarray, subjects: np.ndarray) -> dict[str, float]:
        """``probe/<metric>_global_cbf``: the label probe on the global CBF scalars alone, same folds and draws."""
        draws = [
            cross_validated_scores(scalars, labels, self.classification, subjects, self.folds, seed)
            for seed in range(self.seed, self.seed + self.draws)
        ]
        return {f"{PREFIX}{name}_global_cbf": float(np.mean([d[name] for d in draws])) for name in draws[0]}

    def probe_set(self, trainer: Trainer) -> tuple[DataLoader, pd.DataFrame]:
        """The probe set's loader and labelled rows, harmonised as the pre-training data (built once)."""
        if self._loader is not None and self._rows is not None:
            return self._loader, self._rows
        from ichor.evaluation.features import predict_datamodule

        data = trainer.datamodule  # type: ignore[attr-defined]
        if data is None or not hasattr(data, "harmonisation_settings"):
            raise ValueError("OnlineProbe needs a CBFDataModule (its harmonisation settings) in the run")
        manifests = self.manifests or list(data.hparams.manifests)
        probe_data = predict_datamodule(
            {"harmonisation": data.harmonisation_settings()},
            manifests,
            "the pre-training data",
            cache_dir=data.hparams.cache_dir,
            batch_size=self.batch_size,
            num_workers=0,
            progress=False,
        )
        rows: Any = probe_data.rows
        rows = rows.loc[labelled_rows(rows, self.target, self.target_values)]
        log.info("online probe: %d labelled scans of %d subjects (%s)", len(rows), rows["subject"].nunique(), manifests)
        self._loader, self._rows = probe_data.predict_dataloader(), rows
        return self._loader, self._rows
