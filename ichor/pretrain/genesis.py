"""``GenesisPretrainer``: restoration pre-training of the 3D ViT on CBF maps (Models Genesis, Zhou et al.).

The encoder sees a corrupted scan (:mod:`ichor.pretrain.corruptions`: local shuffling,
non-linear intensity curves, in-/out-painting) and the MAE's light Transformer decoder
(:class:`ichor.models.TransformerDecoder`) predicts every patch of the original; the loss is
the voxel MSE inside the brain. Models Genesis used a 3D U-Net; with the ViT it is MAE's
encoder-decoder with every brain token visible, so that only the pretext task differs from the MAE.
Tokens outside the brain (zero rows of ``forward_features``) are hidden from attention as keys;
their queries still predict, from the brain tokens around them.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, ClassVar

import torch

from ichor.models import Backbone, TransformerDecoder, ViTEncoder3D
from ichor.models.patching import unpatchify
from ichor.models.vit import init_weights
from ichor.pretrain.base import TRAIN_STREAM, Pretrainer, brain_mask_of
from ichor.pretrain.corruptions import GenesisCorruption
from ichor.training.optim import AdamW
from ichor.training.settings import as_dataclass


def brain_mse(pred: torch.Tensor, target: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Mean squared error over brain voxels, in fp32 (even under autocast)."""
    weight = brain.float()
    return ((pred.float() - target.float()).pow(2) * weight).sum() / weight.sum().clamp_min(1.0)


class GenesisPretrainer(Pretrainer):
    """Models Genesis-style restoration pre-training of a 3D ViT on harmonised CBF maps.

    Args:
        backbone, optim, seed: see :class:`ichor.pretrain.base.Pretrainer`.
        decoder_embed_dim, decoder_depth, decoder_num_heads: decoder size; None takes the
            backbone's (its preset's MAE decoder, or ``backbone.overrides``).
        corruption: what is done to the input (:class:`GenesisCorruption`).
    """

    method: ClassVar[str] = "genesis"

    def __init__(
        self,
        backbone: Backbone = Backbone(),
        optim: AdamW = AdamW(),
        decoder_embed_dim: int | None = None,
        decoder_depth: int | None = None,
        decoder_num_heads: int | None = None,
        corruption: GenesisCorruption = GenesisCorruption(),
        seed: int = 0,
    ) -> None:
        corruption = as_dataclass(GenesisCorruption, corruption)
        patch_size = as_dataclass(Backbone, backbone).patch_size
        if patch_size % corruption.shuffle_block:
            raise ValueError(
                f"corruption.shuffle_block {corruption.shuffle_block} must divide backbone.patch_size {patch_size} "
                "(so that shuffling cells tile every input shape the model accepts)"
            )
        super().__init__()
        self.corruption = corruption

    def build_networks(self, img_size: tuple[int, int, int]) -> None:
        hp = self.hparams
        self.encoder = self.build_encoder(img_size)
        network = self.backbone.config()
        decoder = replace(
            network,
            decoder_embed_dim=hp.decoder_embed_dim or network.decoder_embed_dim,
            decoder_depth=hp.decoder_depth if hp.decoder_depth is not None else network.decoder_depth,
            decoder_num_heads=hp.decoder_num_heads or network.decoder_num_heads,
        )
        self.decoder = TransformerDecoder(decoder, self.encoder.grid, self.backbone.grad_checkpointing)
        self.decoder.apply(init_weights)

    def encoder_network(self) -> ViTEncoder3D:
        return self.encoder

    def pretraining_record(self) -> dict[str, Any]:
        return {**super().pretraining_record(), "corruption": asdict(self.corruption)}

    def restore(self, corrupted: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """The predicted original (B, C, D, H, W) of a corrupted batch."""
        tokens, token_mask = self.encoder(corrupted, brain)
        x = self.decoder.embed(tokens)
        rows = self.decoder(x + self.decoder.positions(x), None if bool(token_mask.all()) else token_mask)
        return unpatchify(rows, self.encoder.patch_size, self.encoder.grid, self.encoder.in_chans)

    def step(self, batch: dict[str, Any], batch_idx: int, stream: int) -> dict[str, torch.Tensor]:
        images, brain = batch["image"], brain_mask_of(batch)
        corrupted = self.corruption(images, brain, self.seeded_generator(batch_idx, stream, images.device))
        loss = brain_mse(self.restore(corrupted, brain), images, brain)
        if stream == TRAIN_STREAM:
            return {"loss": loss}
        # The baseline a useful model must beat: returning its input unchanged.
        return {"loss": loss, "loss_identity": brain_mse(corrupted, images, brain)}
