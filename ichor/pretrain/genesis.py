"""``GenesisPretrainer``: restoration pre-training of the 3D ViT on CBF maps (Models Genesis, Zhou et al.).

The encoder sees a corrupted scan (:mod:`ichor.pretrain.corruptions`: local shuffling,
non-linear intensity curves, in-/out-painting) and a light Transformer decoder predicts every
patch of the original; the loss is the voxel MSE inside the brain. Models Genesis used a 3D
U-Net; with the ViT it is MAE's encoder-decoder with every brain token visible, so that only
the pretext task differs from the MAE.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar

import torch
from torch import nn

from ichor.models import ARCHITECTURES, ViTEncoder3D
from ichor.models.patching import unpatchify
from ichor.models.pos_embed import sincos_3d
from ichor.models.vit import Block, init_weights, run_blocks
from ichor.pretrain.base import TRAIN_STREAM, Pretrainer, as_dataclass, brain_mask_of, build_encoder
from ichor.pretrain.corruptions import GenesisCorruption


class RestorationDecoder(nn.Module):
    """Encoder tokens (B, L, C) in grid order -> voxel predictions (B, L, in_chans * p^3) for every patch.

    Tokens outside the brain (zero rows of ``forward_features``) are hidden from attention as
    keys; their queries still predict, from the brain tokens around them.
    """

    def __init__(self, grid: tuple[int, int, int], patch_size: int, in_chans: int, embed_dim: int,
                 decoder_embed_dim: int, decoder_depth: int, decoder_num_heads: int, mlp_ratio: float = 4.0,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.grad_checkpointing = grad_checkpointing
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.register_buffer("decoder_pos_embed", sincos_3d(grid, decoder_embed_dim).unsqueeze(0), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, in_chans * patch_size**3)
        self.apply(init_weights)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(tokens) + self.decoder_pos_embed.to(tokens.dtype)
        padding = None if bool(token_mask.all()) else token_mask
        x = run_blocks(self.decoder_blocks, x, padding, self.grad_checkpointing)
        return self.decoder_pred(self.decoder_norm(x))


def brain_mse(pred: torch.Tensor, target: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Mean squared error over brain voxels, in fp32 (even under autocast)."""
    weight = brain.float()
    return ((pred.float() - target.float()).pow(2) * weight).sum() / weight.sum().clamp_min(1.0)


class GenesisPretrainer(Pretrainer):
    """Models Genesis-style restoration pre-training of a 3D ViT on harmonised CBF maps.

    Args:
        model, img_size, patch_size, model_kwargs, base_lr, weight_decay, betas, warmup_epochs,
        min_lr_factor, grad_checkpointing, compile, seed: see :class:`ichor.pretrain.base.Pretrainer`.
        decoder_embed_dim, decoder_depth, decoder_num_heads: decoder size; None takes the
            preset's MAE decoder.
        corruption: what is done to the input (:class:`GenesisCorruption`).
    """

    method: ClassVar[str] = "genesis"

    def __init__(
        self,
        model: str = "mae_vit_tiny",
        img_size: tuple[int, int, int] | None = None,
        patch_size: int = 16,
        model_kwargs: dict[str, Any] | None = None,
        decoder_embed_dim: int | None = None,
        decoder_depth: int | None = None,
        decoder_num_heads: int | None = None,
        corruption: GenesisCorruption = GenesisCorruption(),
        base_lr: float = 1.5e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 5.0,
        min_lr_factor: float = 0.0,
        grad_checkpointing: bool = False,
        compile: bool = False,
        seed: int = 0,
    ) -> None:
        corruption = as_dataclass(GenesisCorruption, corruption)
        if patch_size % corruption.shuffle_block:
            raise ValueError(
                f"corruption.shuffle_block {corruption.shuffle_block} must divide patch_size {patch_size} "
                "(so that shuffling cells tile every input shape the model accepts)"
            )
        super().__init__()
        self.corruption = corruption

    def build_networks(self, img_size: tuple[int, int, int]) -> None:
        hp = self.hparams
        self.encoder = build_encoder(hp.model, img_size, hp.patch_size, hp.grad_checkpointing, **(hp.model_kwargs or {}))
        preset = dict(zip(("embed_dim", "depth", "num_heads"), ARCHITECTURES[hp.model][3:]))
        self.decoder = RestorationDecoder(
            self.encoder.grid, hp.patch_size, self.encoder.in_chans, self.encoder.embed_dim,
            decoder_embed_dim=hp.decoder_embed_dim or preset["embed_dim"],
            decoder_depth=hp.decoder_depth if hp.decoder_depth is not None else preset["depth"],
            decoder_num_heads=hp.decoder_num_heads or preset["num_heads"],
            grad_checkpointing=hp.grad_checkpointing,
        )

    def encoder_network(self) -> ViTEncoder3D:
        return self.encoder

    def pretraining_record(self) -> dict[str, Any]:
        return {**super().pretraining_record(), "corruption": asdict(self.corruption)}

    def restore(self, corrupted: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """The predicted original (B, C, D, H, W) of a corrupted batch."""
        tokens, token_mask = self.encoder(corrupted, brain)
        rows = self.decoder(tokens, token_mask)
        return unpatchify(rows, self.encoder.patch_size, self.encoder.grid, self.encoder.in_chans)

    def step(self, batch: dict[str, Any], batch_idx: int, stream: int) -> dict[str, torch.Tensor]:
        images, brain = batch["image"], brain_mask_of(batch)
        corrupted = self.corruption(images, brain, self.seeded_generator(batch_idx, stream, images.device))
        loss = brain_mse(self.restore(corrupted, brain), images, brain)
        if stream == TRAIN_STREAM:
            return {"loss": loss}
        # The baseline a useful model must beat: returning its input unchanged.
        return {"loss": loss, "loss_identity": brain_mse(corrupted, images, brain)}
