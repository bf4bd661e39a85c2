"""``Pretrainer``: what every self-supervised pre-training method of ICHOR shares.

MAE, SimCLR and Models Genesis differ only in their pretext task; everything else is one
implementation, so that a comparison between methods compares pretext tasks and nothing else:
- the same encoder (:class:`ViTEncoder3D` at the widths of a named preset), built with
  weights that depend on ``seed`` only;
- input shape and harmonisation settings taken from the datamodule at setup, and recorded in
  the checkpoint (``DATA_RECORD_KEY``) so that exports need no datamodule;
- an encoder record (``ENCODER_RECORD_KEY``): where the encoder sits in the state dict and how
  to rebuild it, so that :mod:`ichor.models.weights` exports any method's encoder the same way;
- randomness (masks, views, corruptions) as a pure function of (seed, stream, epoch, batch,
  rank), so that a resumed run draws what an uninterrupted one would have;
- the MAE optimiser recipe (AdamW, batch-scaled lr, warm-up + cosine) and the same scalars:
  ``train/loss``, ``val/loss``, ``train/scans_per_s``, ``train/grad_norm`` (lr by the
  ``LearningRateMonitor`` callback).

A method subclasses :class:`Pretrainer`, lists the shared arguments in its own ``__init__``
(so that they are config keys), calls ``super().__init__()`` and implements
``build_networks``, ``encoder_network`` and ``step``.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import grad_norm
from torch.optim.lr_scheduler import LambdaLR

from ichor.models import ARCHITECTURES, ViTEncoder3D
from ichor.pretrain.optim import param_groups_weight_decay, scaled_lr, warmup_cosine

# Checkpoint key of the data record (harmonisation settings and data summary of the run).
DATA_RECORD_KEY = "ichor_data"
# Checkpoint key of the encoder record: method, state-dict prefix and constructor arguments.
ENCODER_RECORD_KEY = "ichor_encoder"

# Streams of random numbers: training draws change every epoch, validation draws never do.
TRAIN_STREAM, VAL_STREAM = 0, 1

ENCODER_KEYS = ("embed_dim", "depth", "num_heads")
T = TypeVar("T")


def build_encoder(
    preset: str,
    img_size: tuple[int, int, int],
    patch_size: int,
    grad_checkpointing: bool = False,
    **overrides: Any,
) -> ViTEncoder3D:
    """A :class:`ViTEncoder3D` at the encoder widths of an MAE preset (``mae_vit_tiny``, ...).

    Methods other than the MAE use the same names so that "SimCLR with mae_vit_base" has
    exactly the encoder of "MAE with mae_vit_base". ``overrides`` (e.g. ``depth``) win.
    """
    if preset not in ARCHITECTURES:
        raise ValueError(f"unknown model {preset!r}: choose one of {', '.join(ARCHITECTURES)}")
    arch = dict(zip(ENCODER_KEYS, ARCHITECTURES[preset][: len(ENCODER_KEYS)]))
    arch.update(overrides)
    return ViTEncoder3D(img_size=tuple(img_size), patch_size=patch_size, grad_checkpointing=grad_checkpointing, **arch)


def as_dataclass(cls: type[T], value: T | dict[str, Any]) -> T:
    """A settings dataclass from itself or from its fields as a dict.

    Checkpoint hyper-parameters hold such settings as plain dicts (``ichor fit`` saves the
    parsed config, and safe ``weights_only`` loading needs plain values), so a module rebuilt
    from a checkpoint receives a dict.
    """
    return value if isinstance(value, cls) else cls(**value)


def brain_mask_of(batch: dict[str, Any]) -> torch.Tensor:
    """The batch's brain mask, or (without one) its non-zero voxels: CBF is zero outside the brain."""
    mask = batch.get("mask")
    return batch["image"] != 0 if mask is None else mask.bool()


class Pretrainer(LightningModule):
    """Base class of the pre-training methods (see the module docstring).

    Shared arguments, which every subclass lists in its own signature:
        model: preset name from ``ichor.models.ARCHITECTURES`` (``mae_vit_micro`` ... ``mae_vit_large``).
        img_size: input shape; ``None`` takes the datamodule's ``shape`` at setup and records it.
        patch_size: cubic patch edge in voxels (16 by default, 8 for small grids).
        model_kwargs: further keywords for the networks (e.g. ``depth``).
        base_lr: lr for an effective batch of 256; scaled linearly with the real one.
        weight_decay: AdamW decay for weights (never for norms and biases).
        betas: AdamW betas; beta2 = 0.95 is the MAE recipe.
        warmup_epochs: linear warm-up length, in epochs (converted to steps).
        min_lr_factor: final lr as a fraction of the peak.
        grad_checkpointing: recompute block activations in backward to save memory.
        compile: ``torch.compile`` the networks in place (keeps checkpoint keys unchanged).
        seed: seeds the initial weights and every random draw of the pretext task.
    """

    #: Short name of the method, as registered in the ``ichor.pretrainers`` entry-point group.
    method: ClassVar[str] = ""
    #: Method-specific hyper-parameters copied into the encoder record (and so into exports).
    recorded_hparams: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()  # collects the subclass's __init__ arguments
        # What the data looked like: saved beside the hyper-parameters, not in them, so that
        # `--ckpt_path` re-parsing sees only init arguments.
        self.data_record: dict[str, Any] = {}
        self.built = False
        self._batch_started = 0.0
        if self.hparams.img_size is not None:
            self._build(self.hparams.img_size)

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

    # ------------------------------------------------------------------ model
    def _build(self, img_size: tuple[int, int, int]) -> None:
        """Build the networks with weights that depend on ``seed`` only, not on when setup runs."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.hparams.seed)
            self.build_networks(tuple(img_size))
        if self.hparams.compile:
            for network in self.children():
                network.compile()
        self.built = True

    def setup(self, stage: str) -> None:
        """Take the input shape and harmonisation settings from the datamodule, once."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "harmonisation_settings"):
            settings = datamodule.harmonisation_settings()
            shape = tuple(settings["shape"])
            if self.hparams.img_size is not None and tuple(self.hparams.img_size) != shape:
                raise ValueError(
                    f"model.img_size {tuple(self.hparams.img_size)} differs from data.shape {shape}: "
                    "leave model.img_size unset to follow the data"
                )
            # Recorded in the checkpoint so that export and reload need no datamodule.
            self.hparams.img_size = shape
            self.data_record = {
                "harmonisation": settings,
                "data_summary": datamodule.data_summary() if hasattr(datamodule, "data_summary") else {},
            }
        if not self.built:
            if self.hparams.img_size is None:
                raise ValueError(f"{type(self).__name__} needs img_size, or a datamodule with harmonisation_settings()")
            self._build(self.hparams.img_size)

    def encoder_record(self) -> dict[str, Any]:
        """Where the encoder is in ``state_dict()`` and how to rebuild it: read by :mod:`ichor.models.weights`.

        Every other state-dict entry belongs to the pretext task (decoder, projector) and is
        dropped on export.
        """
        encoder = self.encoder_network()
        name = next(name for name, module in self.named_modules() if module is encoder)
        config = dict(encoder.config)
        config["img_size"] = list(config["img_size"])
        return {
            "method": self.method,
            "prefix": f"{name}.",
            "preset": self.hparams.model,
            "config": config,
            "pretraining": self.pretraining_record(),
        }

    def pretraining_record(self) -> dict[str, Any]:
        """How the encoder was pre-trained, as plain (JSON) values: copied into ``encoder.json`` on export."""
        return {k: self.hparams.get(k) for k in (*self.recorded_hparams, "base_lr", "seed")}

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
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if not self._batch_started:
            self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        """Scans/s over the whole loop (data wait included), summed over devices."""
        now = time.perf_counter()
        elapsed, self._batch_started = now - self._batch_started, now
        if elapsed > 0:
            rate = batch["image"].shape[0] * self.trainer.world_size / elapsed
            self.log("train/scans_per_s", rate, batch_size=batch["image"].shape[0])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norms = grad_norm(self, norm_type=2)
        self.log("train/grad_norm", norms["grad_2.0_norm_total"])

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        hp = self.hparams
        trainer = self.trainer
        batch = getattr(getattr(trainer, "datamodule", None), "hparams", {}).get("batch_size", 1)
        effective = batch * trainer.accumulate_grad_batches * trainer.world_size
        lr = scaled_lr(hp.base_lr, effective)
        optimizer = torch.optim.AdamW(param_groups_weight_decay(self, hp.weight_decay), lr=lr, betas=tuple(hp.betas))
        total = max(1, int(trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, trainer.max_epochs or 1))
        warmup = min(total - 1, int(hp.warmup_epochs * steps_per_epoch)) if total > 1 else 0
        schedule = LambdaLR(optimizer, lambda step: warmup_cosine(step, max(warmup, 1), total, hp.min_lr_factor))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
