"""``MAEPretrainer``: the LightningModule that pre-trains a 3D ViT as a masked autoencoder."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm
from torch.optim.lr_scheduler import LambdaLR

from ichor.models import build_mae
from ichor.pretrain.figures import reconstruction_figure
from ichor.pretrain.optim import param_groups_weight_decay, scaled_lr, warmup_cosine

# Checkpoint key of the data record (harmonisation settings and data summary of the run).
DATA_RECORD_KEY = "ichor_data"


class MAEPretrainer(LightningModule):
    """Masked-autoencoder pre-training of a 3D ViT on harmonised CBF maps.

    Args:
        model: preset name from ``ichor.models.MODELS`` (``mae_vit_tiny`` ... ``mae_vit_large``).
        img_size: input shape; ``None`` takes the datamodule's ``shape`` at setup and records it.
        patch_size: cubic patch edge in voxels (16 by default, 8 for small grids).
        mask_ratio: fraction of (brain) patches hidden from the encoder.
        norm_pix_loss: regress per-patch normalised voxels (MAE's better target).
        brain_aware: only patches that contain brain enter the encoder and the loss.
        model_kwargs: further keywords for the preset (e.g. decoder depth).
        base_lr: lr for an effective batch of 256; scaled linearly with the real one.
        weight_decay: AdamW decay for weights (never for norms and biases).
        betas: AdamW betas; beta2 = 0.95 is the MAE recipe.
        warmup_epochs: linear warm-up length, in epochs (converted to steps).
        min_lr_factor: final lr as a fraction of the peak.
        grad_checkpointing: recompute block activations in backward to save memory.
        compile: ``torch.compile`` the model in place (keeps checkpoint keys unchanged).
        figure_every_n_steps: log a reconstruction figure of a fixed validation scan this often.
        seed: seeds the masking noise, which is a pure function of (seed, epoch, batch, rank)
            so that a resumed run draws the same masks as an uninterrupted one.
    """

    def __init__(
        self,
        model: str = "mae_vit_tiny",
        img_size: tuple[int, int, int] | None = None,
        patch_size: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        brain_aware: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        base_lr: float = 1.5e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 5.0,
        min_lr_factor: float = 0.0,
        grad_checkpointing: bool = False,
        compile: bool = False,
        figure_every_n_steps: int = 200,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.mae: torch.nn.Module | None = None
        # What the data looked like (harmonisation settings, summary): saved beside the
        # hyper-parameters, not in them, so `--ckpt_path` re-parsing sees only init arguments.
        self.data_record: dict[str, Any] = {}
        self._batch_started = 0.0
        self._last_figure_step: int | None = None
        if img_size is not None:
            self._build(img_size)

    # ------------------------------------------------------------------ model
    def _build(self, img_size: tuple[int, int, int]) -> None:
        """Build the MAE with weights that depend on ``seed`` only, not on when setup runs."""
        hp = self.hparams
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp.seed)
            self.mae = self._make_mae(img_size)
        if hp.compile:
            self.mae.compile()

    def _make_mae(self, img_size: tuple[int, int, int]) -> torch.nn.Module:
        hp = self.hparams
        return build_mae(
            hp.model,
            img_size=tuple(img_size),
            patch_size=hp.patch_size,
            mask_ratio=hp.mask_ratio,
            norm_pix_loss=hp.norm_pix_loss,
            brain_aware=hp.brain_aware,
            grad_checkpointing=hp.grad_checkpointing,
            **(hp.model_kwargs or {}),
        )

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
        if self.mae is None:
            if self.hparams.img_size is None:
                raise ValueError("MAEPretrainer needs img_size, or a datamodule with harmonisation_settings()")
            self._build(self.hparams.img_size)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[DATA_RECORD_KEY] = self.data_record

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.data_record = checkpoint.get(DATA_RECORD_KEY, {})

    # ------------------------------------------------------------------ steps
    def _noise(self, batch_size: int, batch_idx: int, stream: int) -> torch.Tensor:
        """Masking noise as a pure function of (seed, stream, epoch, batch, rank): resumable.

        Validation (stream 1) ignores the epoch so that every epoch scores the same masks.
        """
        epoch = self.current_epoch if stream == 0 else 0
        key = [self.hparams.seed, stream, epoch, batch_idx, self.global_rank]
        seed = int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] >> 1)
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(batch_size, self.mae.num_patches, generator=generator).to(self.device)

    def _shared_step(self, batch: dict[str, Any], batch_idx: int, stream: int):
        images, brain = batch["image"], batch.get("mask")
        noise = self._noise(images.shape[0], batch_idx, stream)
        loss, pred, mask = self.mae(images, brain_mask=brain, noise=noise)
        return loss, pred, mask

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._shared_step(batch, batch_idx, stream=0)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, pred, mask = self._shared_step(batch, batch_idx, stream=1)
        images = batch["image"]
        size = images.shape[0]
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=size)
        baseline = self.mae.forward_loss(images, self._mean_prediction(images, batch.get("mask"), pred), mask)
        self.log("val/loss_mean_prediction", baseline, sync_dist=True, batch_size=size)
        if batch_idx == 0 and self._figure_due():
            self._log_reconstruction(images[:1], pred[:1], mask[:1])

    def _mean_prediction(self, images: torch.Tensor, brain: torch.Tensor | None, pred: torch.Tensor) -> torch.Tensor:
        """The baseline a useful model must beat: every masked patch predicted as a constant.

        The constant is the scan's mean brain value; in norm-pix target space any constant
        patch is zero, so there the baseline is zeros.
        """
        if self.hparams.norm_pix_loss:
            return torch.zeros_like(pred)
        brain = (images != 0) if brain is None else brain
        weights = brain.to(images.dtype)
        mean = (images * weights).sum((1, 2, 3, 4)) / weights.sum((1, 2, 3, 4)).clamp_min(1)
        return mean.view(-1, 1, 1).expand_as(pred).to(pred.dtype)

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
        norms = grad_norm(self.mae, norm_type=2)
        self.log("train/grad_norm", norms["grad_2.0_norm_total"])

    def _figure_due(self) -> bool:
        every = self.hparams.figure_every_n_steps
        if not every or self.trainer.sanity_checking or not isinstance(self.logger, TensorBoardLogger):
            return False
        return self._last_figure_step is None or self.global_step - self._last_figure_step >= every

    @torch.no_grad()
    def _log_reconstruction(self, image: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> None:
        """Input, masked input, reconstruction (visible patches pasted back) and error."""
        self._last_figure_step = self.global_step
        mae = self.mae
        pred = pred.float()
        label = "reconstruction"
        if self.hparams.norm_pix_loss:
            # Norm-pix predictions are per-patch z-scores: show them with the TRUE patch
            # mean/std put back, and say so, since those statistics come from the target.
            target = mae.patchify(image.float())
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
            label = "recon. (patch mean/std from input)"
        visible = (1 - mask.float()).unsqueeze(-1)
        patches = mae.patchify(image.float())
        masked = mae.unpatchify(patches * visible)
        pasted = mae.unpatchify(patches * visible + pred * (1 - visible))
        figure = reconstruction_figure(
            image[0, 0].float().cpu().numpy(),
            masked[0, 0].cpu().numpy(),
            pasted[0, 0].cpu().numpy(),
            title=f"step {self.global_step}: fixed validation scan, mask ratio {self.hparams.mask_ratio}",
            reconstruction_label=label,
        )
        self.logger.experiment.add_figure("val/reconstruction", figure, global_step=self.global_step)

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        hp = self.hparams
        trainer = self.trainer
        batch = getattr(getattr(trainer, "datamodule", None), "hparams", {}).get("batch_size", 1)
        effective = batch * trainer.accumulate_grad_batches * trainer.world_size
        lr = scaled_lr(hp.base_lr, effective)
        optimizer = torch.optim.AdamW(
            param_groups_weight_decay(self.mae, hp.weight_decay), lr=lr, betas=tuple(hp.betas)
        )
        total = max(1, int(trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, trainer.max_epochs or 1))
        warmup = min(total - 1, int(hp.warmup_epochs * steps_per_epoch)) if total > 1 else 0
        schedule = LambdaLR(
            optimizer, lambda step: warmup_cosine(step, max(warmup, 1), total, hp.min_lr_factor)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
