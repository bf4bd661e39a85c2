"""``Pretrainer``: what every self-supervised pre-training method of ICHOR shares.

One encoder, data record, seeding, optimiser recipe and set of scalars for all methods, so that a
comparison between methods compares pretext tasks and nothing else (docs/reference/pretraining.md).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import grad_norm

from ichor.models import Backbone, ViTEncoder3D
from ichor.models.weights import DATA_RECORD_KEY, ENCODER_RECORD_KEY
from ichor.training.optim import AdamW, configure_adamw
from ichor.training.settings import as_dataclass
from ichor.training.throughput import StepClock, peak_flops

# Streams of random numbers: training draws change every epoch, validation draws never do.
TRAIN_STREAM, VAL_STREAM = 0, 1


def brain_mask_of(batch: dict[str, Any]) -> torch.Tensor:
    """The batch's brain mask, or (without one) its non-zero voxels: CBF is zero outside the brain."""
    mask = batch.get("mask")
    return batch["image"] != 0 if mask is None else mask.bool()


class Pretrainer(LightningModule):
    """Base class of the pre-training methods (docs/reference/pretraining.md).

    Shared arguments, which every subclass lists in its own signature:
        backbone: the encoder (:class:`ichor.models.Backbone`: preset, patch size, input shape, ...).
        optim: the optimiser recipe (:class:`ichor.training.optim.AdamW`); its ``lr`` is for a
            batch of 256 scans, scaled linearly with the real one.
        seed: seeds the initial weights and every random draw of the pretext task.
    """

    #: Short name of the method, as registered in the ``ichor.pretrainers`` entry-point group.
    method: ClassVar[str] = ""
    #: Method-specific hyper-parameters copied into the encoder record (and so into exports).
    recorded_hparams: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()  # collects the subclass's __init__ arguments
        self.backbone = as_dataclass(Backbone, self.hparams.backbone)
        self.optim = as_dataclass(AdamW, self.hparams.optim)
        # Plain values in the checkpoint: `--ckpt_path` re-parses them with safe loading.
        self.hparams.backbone, self.hparams.optim = self.backbone.as_dict(), self.optim.as_dict()
        # What the data looked like: saved beside the hyper-parameters, not in them, so that
        # `--ckpt_path` re-parsing sees only init arguments.
        self.data_record: dict[str, Any] = {}
        self.built = False
        self.step_clock = StepClock()
        self.throughput: dict[str, float] = {}  # the last timed step's scans/s and data-wait fraction
        self._peak_flops: float | None = None
        if self.backbone.img_size is not None:
            self._build(self.backbone.img_size)

    @classmethod
    def checkpoint_monitor(cls, init_args: Any) -> tuple[str, str]:
        """What the checkpoint callback of ``ichor fit`` keeps the best of (lower is better)."""
        return "val/loss", "min"

    # ------------------------------------------------------------ subclass API
    def build_networks(self, img_size: tuple[int, int, int]) -> None:
        """Create the networks as attributes (called once, under a seeded random state)."""
        raise NotImplementedError

    def encoder_network(self) -> ViTEncoder3D:
        """The encoder that downstream tasks keep."""
        raise NotImplementedError

    def step(self, batch: dict[str, Any], batch_idx: int, stream: int) -> dict[str, torch.Tensor]:
        """The pretext task on one batch: ``{"loss": ..., **other scalars}``.

        Training logs only ``train/loss``; validation logs every entry as ``val/<name>``
        (e.g. a baseline the loss must beat).
        """
        raise NotImplementedError

    def step_flops_per_scan(self, batch: dict[str, Any]) -> float | None:
        """Analytic FLOPs of one training step per scan of ``batch`` (for ``train/tflops``, ``train/mfu``); None: not counted."""
        return None

    # ------------------------------------------------------------------ model
    def build_encoder(self, img_size: tuple[int, int, int]) -> ViTEncoder3D:
        """The backbone's encoder at ``img_size``, for methods whose pretext head sits on a bare encoder."""
        return ViTEncoder3D(self.backbone.config(), img_size, self.backbone.grad_checkpointing)

    def _build(self, img_size: tuple[int, int, int]) -> None:
        """Build the networks with weights that depend on ``seed`` only, not on when setup runs."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.hparams.seed)
            self.build_networks(tuple(img_size))
        if self.backbone.compile:
            for network in self.children():
                network.compile()
        self.built = True

    def setup(self, stage: str) -> None:
        """Take the input shape and harmonisation settings from the datamodule, once."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "harmonisation_settings"):
            settings = datamodule.harmonisation_settings()
            shape = tuple(settings["shape"])
            if self.backbone.img_size is not None and self.backbone.img_size != shape:
                raise ValueError(
                    f"model.backbone.img_size {self.backbone.img_size} differs from data.shape {shape}: "
                    "leave model.backbone.img_size unset to follow the data"
                )
            # Recorded in the checkpoint so that export and reload need no datamodule.
            self.backbone.img_size = shape
            self.hparams.backbone = self.backbone.as_dict()
            self.data_record = {
                "harmonisation": settings,
                "data_summary": datamodule.data_summary() if hasattr(datamodule, "data_summary") else {},
            }
        if not self.built:
            if self.backbone.img_size is None:
                raise ValueError(
                    f"{type(self).__name__} needs backbone.img_size, or a datamodule with harmonisation_settings()"
                )
            self._build(self.backbone.img_size)

    def encoder_record(self) -> dict[str, Any]:
        """Where the encoder is in ``state_dict()`` and how to rebuild it: read by :mod:`ichor.models.weights`.

        Every other state-dict entry belongs to the pretext task (decoder, projector) and is
        dropped on export.
        """
        encoder = self.encoder_network()
        name = next(name for name, module in self.named_modules() if module is encoder)
        config = {**asdict(encoder.config), "img_size": list(encoder.img_size)}
        return {
            "method": self.method,
            "prefix": f"{name}.",
            "preset": self.backbone.preset,
            "config": config,
            "pretraining": self.pretraining_record(),
        }

    def pretraining_record(self) -> dict[str, Any]:
        """How the encoder was pre-trained, as plain (JSON) values: copied into ``encoder.json`` on export."""
        return {**{k: self.hparams.get(k) for k in (*self.recorded_hparams, "seed")}, "optim": self.optim.as_dict()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[DATA_RECORD_KEY] = self.data_record
        checkpoint[ENCODER_RECORD_KEY] = self.encoder_record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.data_record = checkpoint.get(DATA_RECORD_KEY, {})

    # ------------------------------------------------------------ randomness
    def seeded_generator(self, batch_idx: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded from (seed, stream, epoch, batch, rank): the draws of a resumed run are
        those of an uninterrupted one. Validation ignores the epoch so every epoch scores the same draws.
        """
        epoch = self.current_epoch if stream == TRAIN_STREAM else 0
        key = [self.hparams.seed, stream, epoch, batch_idx, self.global_rank]
        seed = int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] >> 1)
        return torch.Generator(device=device).manual_seed(seed)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.step(batch, batch_idx, TRAIN_STREAM)["loss"]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        size = batch["image"].shape[0]
        for name, value in self.step(batch, batch_idx, VAL_STREAM).items():
            self.log(f"val/{name}", value, prog_bar=name == "loss", sync_dist=True, batch_size=size)

    # ------------------------------------------------------------- monitoring
    def on_fit_start(self) -> None:
        self._peak_flops = peak_flops(self.device, str(self.trainer.precision))

    def on_train_epoch_start(self) -> None:
        self.step_clock.restart()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.step_clock.step_started()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        """Scans/s over the whole loop (summed over devices), the share of it waiting for data, TFLOP/s and MFU per device.

        Each step's values are kept in ``throughput``; they are logged (and the FLOP count, which reads
        the mask back from the device, refreshed) only on the steps the logger writes, as Lightning's
        ``LearningRateMonitor`` does: a ``self.log`` call costs ~0.3 ms, which for four scalars nobody
        reads in between was 3 % of the demo's micro MAE step, counted as data wait.
        """
        timing = self.step_clock.step_ended()
        if timing is not None and timing[0] > 0:
            (interval, wait), size = timing, batch["image"].shape[0]
            self.throughput = {
                "train/scans_per_s": size * self.trainer.world_size / interval,
                "train/data_wait_fraction": wait / interval,
            }
            if self.trainer._logger_connector.should_update_logs:
                self._log_throughput(batch, interval)
        self.step_clock.hooks_ended()

    def _log_throughput(self, batch: dict[str, Any], interval: float) -> None:
        size = batch["image"].shape[0]
        for name, value in self.throughput.items():
            self.log(name, value, batch_size=size)
        flops_per_scan = self.step_flops_per_scan(batch)
        if flops_per_scan is not None:
            achieved = flops_per_scan * size / interval
            self.log("train/tflops", achieved / 1e12, batch_size=size)
            if self._peak_flops:
                self.log("train/mfu", achieved / self._peak_flops, batch_size=size)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.trainer._logger_connector.should_update_logs:  # the norm of every gradient: only when written
            self.log("train/grad_norm", grad_norm(self, norm_type=2)["grad_2.0_norm_total"])

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict:
        return configure_adamw(self, self.optim)
