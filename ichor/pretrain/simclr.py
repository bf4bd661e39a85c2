"""``SimCLRPretrainer``: contrastive pre-training of the 3D ViT on CBF maps (SimCLR, Chen et al. 2020).

Two random views of each scan (:mod:`ichor.pretrain.views`) go through the encoder; the mean
of the brain tokens (the same pooling as downstream ``brain_mean``) goes through a projection
MLP, and the NT-Xent loss pulls the two views of a scan together and pushes other scans away.
This is the recipe BrainIAC adapted to brain MRI; here it is the contrastive baseline that the
MAE is compared against, with the same encoder, data and optimiser.

Under DDP the negatives are the whole global batch: embeddings are gathered from every rank;
the local rows keep their gradient, the other ranks' rows are constants (each rank
back-propagates its own anchors, and DDP averages the gradients).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ichor.models import Backbone, ViTEncoder3D
from ichor.models.vit import init_weights
from ichor.pretrain.base import TRAIN_STREAM, Pretrainer, brain_mask_of
from ichor.pretrain.views import ViewAugmentation
from ichor.training.optim import AdamW
from ichor.training.settings import as_dataclass


def nt_xent_logits(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    keys1: torch.Tensor | None = None,
    keys2: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets of NT-Xent for anchors ``z1``, ``z2`` (N, d): the two views of N scans.

    ``keys1``/``keys2`` (M, d) are the views of the whole (global) batch, whose rows
    ``offset : offset + N`` are ``z1``/``z2``; by default the local batch (M = N). Each anchor
    is scored against all 2M keys but itself; its target is the other view of its scan.
    Returns ``logits`` (2N, 2M) and ``targets`` (2N,), so that
    ``F.cross_entropy(logits, targets)`` is the loss.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"views must be two (N, d) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    keys1 = z1 if keys1 is None else keys1
    keys2 = z2 if keys2 is None else keys2
    n, m = z1.shape[0], keys1.shape[0]
    anchors = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    keys = F.normalize(torch.cat([keys1, keys2]).float(), dim=1)
    logits = anchors @ keys.T / temperature
    own = torch.arange(n, device=z1.device) + offset  # each anchor's scan in the global batch
    self_index = torch.cat([own, own + m])
    logits = logits.scatter(1, self_index[:, None], float("-inf"))
    targets = torch.cat([own + m, own])
    return logits, targets


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, **keys: Any) -> torch.Tensor:
    """The normalised temperature-scaled cross-entropy loss (mean over the 2N anchors); see :func:`nt_xent_logits`."""
    logits, targets = nt_xent_logits(z1, z2, temperature, **keys)
    return F.cross_entropy(logits, targets)


class ProjectionHead(nn.Sequential):
    """SimCLR's projection MLP: Linear -> ReLU -> Linear.

    No BatchNorm: per-device batches of 3D scans are small (8-16), so batch statistics are
    noisy and, under DDP, per-rank unless synchronised.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__(
            nn.Linear(in_features, hidden_features), nn.ReLU(inplace=True), nn.Linear(hidden_features, out_features)
        )
        self.apply(init_weights)


class SimCLRPretrainer(Pretrainer):
    """Contrastive (SimCLR) pre-training of a 3D ViT on harmonised CBF maps.

    Args:
        backbone, optim, seed: see :class:`ichor.pretrain.base.Pretrainer`.
        projection_dim: output width of the projection MLP (the space NT-Xent works in).
        projection_hidden_dim: hidden width of the projection MLP.
        temperature: NT-Xent temperature; lower sharpens the contrast (0.1 suits small batches).
        augmentation: the two views' random transformations (:class:`ViewAugmentation`).
    """

    method: ClassVar[str] = "simclr"
    recorded_hparams: ClassVar[tuple[str, ...]] = ("temperature", "projection_dim")

    def __init__(
        self,
        backbone: Backbone = Backbone(),
        optim: AdamW = AdamW(),
        projection_dim: int = 128,
        projection_hidden_dim: int = 2048,
        temperature: float = 0.1,
        augmentation: ViewAugmentation = ViewAugmentation(),
        seed: int = 0,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        super().__init__()
        self.augmentation = as_dataclass(ViewAugmentation, augmentation)

    def build_networks(self, img_size: tuple[int, int, int]) -> None:
        hp = self.hparams
        self.encoder = self.build_encoder(img_size)
        self.projector = ProjectionHead(self.encoder.embed_dim, hp.projection_hidden_dim, hp.projection_dim)

    def encoder_network(self) -> ViTEncoder3D:
        return self.encoder

    def pretraining_record(self) -> dict[str, Any]:
        return {**super().pretraining_record(), "augmentation": asdict(self.augmentation)}

    def embed(self, images: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """Projections (B, projection_dim) of the brain-token means."""
        tokens, token_mask = self.encoder(images, brain)
        weights = token_mask.unsqueeze(-1).to(tokens.dtype)
        return self.projector((tokens * weights).sum(1) / weights.sum(1).clamp_min(1))

    def contrastive_logits(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """NT-Xent logits of the local anchors against the global batch (gathered under DDP)."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return nt_xent_logits(z1, z2, self.hparams.temperature)
        # all_gather returns (world, N, d) without gradient; put the local rows back with theirs.
        # Equal N on every rank is assumed (the DistributedSampler pads the last batch).
        keys = []
        for z in (z1, z2):
            parts = list(self.all_gather(z.detach()).unbind(0))
            parts[self.global_rank] = z
            keys.append(torch.cat(parts))
        offset = self.global_rank * z1.shape[0]
        return nt_xent_logits(z1, z2, self.hparams.temperature, keys1=keys[0], keys2=keys[1], offset=offset)

    def step(self, batch: dict[str, Any], batch_idx: int, stream: int) -> dict[str, torch.Tensor]:
        images, brain = batch["image"], brain_mask_of(batch)
        generator = self.seeded_generator(batch_idx, stream, images.device)
        view1, mask1 = self.augmentation(images, brain, generator)
        view2, mask2 = self.augmentation(images, brain, generator)
        z1, z2 = self.embed(torch.cat([view1, view2]), torch.cat([mask1, mask2])).chunk(2)  # one encoder pass
        logits, targets = self.contrastive_logits(z1, z2)
        loss = F.cross_entropy(logits, targets)
        if stream == TRAIN_STREAM:
            return {"loss": loss}
        # Retrieval accuracy: how often the other view is a scan's nearest key (chance 1 / (2M - 1)).
        return {"loss": loss, "top1": (logits.argmax(1) == targets).float().mean()}
