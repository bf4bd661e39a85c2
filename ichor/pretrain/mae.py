"""``MAEPretrainer``: the LightningModule that pre-trains a 3D ViT as a masked autoencoder."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch
from lightning.pytorch.loggers import TensorBoardLogger

from ichor.models import Backbone, MaskedAutoencoderViT3D, ViTEncoder3D, mae_flops
from ichor.pretrain.base import VAL_STREAM, Pretrainer
from ichor.pretrain.figures import reconstruction_figure
from ichor.training.optim import AdamW


class MAEPretrainer(Pretrainer):
    """Masked-autoencoder pre-training of a 3D ViT on harmonised CBF maps.

    Args:
        backbone, optim: see :class:`ichor.pretrain.base.Pretrainer`.
        mask_ratio: fraction of (brain) patches hidden from the encoder.
        norm_pix_loss: regress per-patch normalised voxels (MAE's better target).
        brain_aware: only patches that contain brain enter the encoder and the loss.
        figure_every_n_steps: log a reconstruction figure of a fixed validation scan this often.
        seed: seeds the masking noise, which is a pure function of (seed, epoch, batch, rank)
            so that a resumed run draws the same masks as an uninterrupted one.
    """

    method: ClassVar[str] = "mae"
    recorded_hparams: ClassVar[tuple[str, ...]] = ("mask_ratio", "norm_pix_loss", "brain_aware")

    def __init__(
        self,
        backbone: Backbone = Backbone(),
        optim: AdamW = AdamW(),
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        brain_aware: bool = True,
        figure_every_n_steps: int = 200,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._last_figure_step: int | None = None

    # ------------------------------------------------------------------ model
    def build_networks(self, img_size: tuple[int, int, int]) -> None:
        hp, backbone = self.hparams, self.backbone
        config = replace(
            backbone.config(), mask_ratio=hp.mask_ratio, norm_pix_loss=hp.norm_pix_loss, brain_aware=hp.brain_aware
        )
        self.mae = MaskedAutoencoderViT3D(config, img_size, backbone.grad_checkpointing)

    def encoder_network(self) -> ViTEncoder3D:
        return self.mae.encoder

    def step_flops_per_scan(self, batch: dict[str, Any]) -> float:
        """By :func:`ichor.models.mae_flops`, over this batch's brain patch counts (they set the token counts)."""
        counts = self.mae.brain_patches(batch["image"], batch.get("mask")).sum(1).tolist()
        return sum(mae_flops(self.mae, n)["train_step_flops"] for n in counts) / len(counts)

    # ------------------------------------------------------------------ steps
    def _noise(self, batch_size: int, batch_idx: int, stream: int) -> torch.Tensor:
        """Masking noise as a pure function of (seed, stream, epoch, batch, rank): resumable.

        Validation (stream 1) ignores the epoch so that every epoch scores the same masks.
        """
        generator = self.seeded_generator(batch_idx, stream)
        return torch.rand(batch_size, self.mae.num_patches, generator=generator).to(self.device)

    def _shared_step(self, batch: dict[str, Any], batch_idx: int, stream: int):
        images, brain = batch["image"], batch.get("mask")
        noise = self._noise(images.shape[0], batch_idx, stream)
        loss, pred, mask = self.mae(images, brain_mask=brain, noise=noise)
        return loss, pred, mask

    def step(self, batch: dict[str, Any], batch_idx: int, stream: int) -> dict[str, torch.Tensor]:
        return {"loss": self._shared_step(batch, batch_idx, stream)[0]}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, pred, mask = self._shared_step(batch, batch_idx, VAL_STREAM)
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

    # ------------------------------------------------------------- figures
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
