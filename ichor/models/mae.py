"""3D masked autoencoder with brain-aware tokens.

The MAE of He et al. (2022) in 3D, with the field's method names (``patchify``,
``random_masking``, ``forward_encoder``, ``forward_decoder``, ``forward_loss``), plus one
CBF-specific change: CBF maps are zero outside the brain, so patches without brain carry
nothing to learn. With ``brain_aware=True`` they never enter the encoder, the decoder or the
loss; the visible set is drawn among brain patches at the mask ratio, per scan.

Batching with per-scan brain counts: every scan keeps exactly ``floor(n_brain * (1 - r))``
visible patches (its own ratio, not the batch minimum's). Sequences are padded to the longest
in the batch and padding is excluded with a key-padding mask in attention; after
harmonisation to one grid brains differ little in size, so padding is a few tokens. The
padded lengths are Python ints (one host sync per step); under ``torch.compile`` they become
dynamic dimensions after the first recompilation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ichor.models.patching import brain_patches, unpatchify
from ichor.models.pos_embed import sincos_3d
from ichor.models.vit import (
    Block,
    ViTEncoder3D,
    check_has_brain,
    gather_tokens,
    init_weights,
    padding_mask,
    run_blocks,
)


class Masking(NamedTuple):
    """One draw of ``random_masking``.

    ``ids_shuffle`` orders each scan's patches as: visible, masked brain, then non-brain.
    ``mask`` is 1 for masked brain patches (hidden and reconstructed; the loss weight), 0 for
    visible and non-brain patches. Paddings are None when every scan has the same count.
    """

    ids_shuffle: torch.Tensor  # (B, L) long
    ids_restore: torch.Tensor  # (B, L) long, inverse permutation of ids_shuffle
    mask: torch.Tensor  # (B, L) float
    len_keep: torch.Tensor  # (B,) visible patches per scan
    num_tokens: torch.Tensor  # (B,) brain patches per scan (L when not brain-aware)
    keep: int  # encoder sequence length = max(len_keep)
    length: int  # decoder sequence length = max(num_tokens)
    keep_padding: torch.Tensor | None  # (B, keep) bool, True = real token
    token_padding: torch.Tensor | None  # (B, length) bool


class MaskedAutoencoderViT3D(nn.Module):
    """Masked autoencoder with a :class:`ViTEncoder3D` (``self.encoder``) and a light decoder.

    Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
        grad_checkpointing, min_brain_fraction: see :class:`ViTEncoder3D`.
        decoder_embed_dim, decoder_depth, decoder_num_heads: decoder width, blocks, heads.
        norm_pix_loss: regress each patch normalised by its own mean and variance.
        mask_ratio: default fraction of (brain) patches hidden from the encoder, in (0, 1).
        brain_aware: drop non-brain patches from encoder, decoder and loss; False gives the
            classic MAE over the whole grid.
    """

    def __init__(
        self,
        img_size: tuple[int, int, int],
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        decoder_embed_dim: int = 128,
        decoder_depth: int = 4,
        decoder_num_heads: int = 4,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = True,
        mask_ratio: float = 0.75,
        brain_aware: bool = True,
        min_brain_fraction: float = 0.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        check_mask_ratio(mask_ratio)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.brain_aware = brain_aware
        self.decoder_embed_dim = decoder_embed_dim
        self.decoder_depth = decoder_depth
        self.decoder_num_heads = decoder_num_heads
        self.encoder = ViTEncoder3D(
            img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
            grad_checkpointing, min_brain_fraction,
        )
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, in_chans * patch_size**3)
        self.set_img_size(img_size)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE initialisation (xavier-uniform linears, unit LayerNorms, normal(0.02) mask token)."""
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def set_img_size(self, img_size: tuple[int, int, int]) -> None:
        """Adopt a new input shape: regenerate encoder and decoder position tables."""
        self.encoder.set_img_size(img_size)
        table = sincos_3d(self.encoder.grid, self.decoder_embed_dim).unsqueeze(0)
        self.register_buffer("decoder_pos_embed", table.to(self.mask_token.device), persistent=False)

    # ------------------------------------------------------------------ geometry
    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    @property
    def img_size(self) -> tuple[int, int, int]:
        return self.encoder.img_size

    @property
    def num_patches(self) -> int:
        return self.encoder.num_patches

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, L, C*p^3)."""
        return self.encoder.patchify(imgs)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C*p^3) -> (B, C, D, H, W)."""
        return unpatchify(x, self.patch_size, self.encoder.grid, self.encoder.in_chans)

    def brain_patches(self, imgs: torch.Tensor, brain_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) bool brain patches, from ``brain_mask`` or, without one, the non-zero voxels."""
        if brain_mask is None:
            brain_mask = (imgs != 0).any(dim=1, keepdim=True)
        return brain_patches(brain_mask, self.patch_size, self.encoder.min_brain_fraction)

    # ------------------------------------------------------------------ masking
    def random_masking(
        self,
        x: torch.Tensor,
        mask_ratio: float,
        noise: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Masking]:
        """Per-scan random masking by sorting noise: the lowest-noise patches stay visible.

        Args:
            x: (B, L, D) patches or tokens.
            mask_ratio: fraction of each scan's (brain) patches to hide.
            noise: (B, L) values in [0, 1); drawn with ``torch.rand`` if None. Injecting it
                makes masks reproducible (e.g. a pure function of seed, epoch and batch).
            token_mask: (B, L) bool, patches eligible at all (brain); None = all.

        Returns:
            ``x_masked`` (B, keep, D): the visible rows, padded to the longest, and the
            :class:`Masking` that the decoder and loss need.
        """
        check_mask_ratio(mask_ratio)
        b, length, _ = x.shape
        if noise is None:
            noise = torch.rand(b, length, device=x.device)
        elif noise.shape != (b, length):
            raise ValueError(f"noise must have shape {(b, length)} (batch, patches), got {tuple(noise.shape)}")
        noise = noise.to(device=x.device, dtype=torch.float32)
        if token_mask is None:
            num_tokens = torch.full((b,), length, device=x.device, dtype=torch.long)
        else:
            noise = noise.masked_fill(~token_mask, float("inf"))  # non-brain patches sort last
            num_tokens = token_mask.sum(dim=1)
        # float64 so that floor(n * (1 - r)) matches Python's int(n * (1 - r)).
        len_keep = (num_tokens.double() * (1.0 - mask_ratio)).floor().long().clamp(min=1)

        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        rank = torch.arange(length, device=x.device)[None, :]
        shuffled_mask = (rank >= len_keep[:, None]) & (rank < num_tokens[:, None])
        mask = torch.gather(shuffled_mask.float(), 1, ids_restore)

        keeps, sizes = torch.stack([len_keep, num_tokens]).tolist()  # one host sync
        check_has_brain(sizes)
        keep, longest = max(keeps), max(sizes)
        masking = Masking(
            ids_shuffle=ids_shuffle,
            ids_restore=ids_restore,
            mask=mask,
            len_keep=len_keep,
            num_tokens=num_tokens,
            keep=keep,
            length=longest,
            keep_padding=None if min(keeps) == keep else padding_mask(len_keep, keep),
            token_padding=None if min(sizes) == longest else padding_mask(num_tokens, longest),
        )
        return gather_tokens(x, ids_shuffle[:, :keep]), masking

    # ------------------------------------------------------------------ passes
    def forward_encoder(
        self,
        imgs: torch.Tensor,
        brain_mask: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Masking]:
        """Mask, then embed and encode only the visible patches: (B, keep, C) latent."""
        return self._encode(self.patchify(imgs), imgs, brain_mask, mask_ratio, noise)

    def _encode(self, patches, imgs, brain_mask, mask_ratio, noise) -> tuple[torch.Tensor, Masking]:
        token_mask = self.brain_patches(imgs, brain_mask) if self.brain_aware else None
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        visible, masking = self.random_masking(patches, ratio, noise, token_mask)
        x = self.encoder.embed(visible, masking.ids_shuffle[:, : masking.keep])
        return self.encoder.forward_blocks(x, masking.keep_padding), masking

    def forward_decoder(self, latent: torch.Tensor, masking: Masking) -> torch.Tensor:
        """Visible latents + mask tokens for the masked brain patches -> (B, L, C*p^3) predictions.

        Non-brain rows of the prediction are zero: they are never decoded.
        """
        return self._to_grid(self._decode(latent, masking), masking)

    def _decode(self, latent: torch.Tensor, masking: Masking) -> torch.Tensor:
        """Predictions (B, length, C*p^3) for the brain patches in shuffled order.

        The decoder sees only brain tokens; order does not matter to attention, positions
        come from the gathered position table.
        """
        x = self.decoder_embed(latent)
        x = F.pad(x, (0, 0, 0, masking.length - masking.keep))
        visible = padding_mask(masking.len_keep, masking.length).unsqueeze(-1)
        x = torch.where(visible, x, self.mask_token.to(x.dtype))
        ids = masking.ids_shuffle[:, : masking.length]
        x = x + gather_tokens(self.decoder_pos_embed.to(x.dtype).expand(x.shape[0], -1, -1), ids)
        x = run_blocks(self.decoder_blocks, x, masking.token_padding, self.encoder.grad_checkpointing)
        return self.decoder_pred(self.decoder_norm(x))

    def _to_grid(self, rows: torch.Tensor, masking: Masking) -> torch.Tensor:
        """Shuffled decoder rows -> (B, L, C*p^3) in grid order, zero where nothing was decoded."""
        if masking.token_padding is not None:
            rows = torch.where(masking.token_padding.unsqueeze(-1), rows, 0.0)
        rows = F.pad(rows, (0, 0, 0, self.num_patches - masking.length))
        return gather_tokens(rows, masking.ids_restore)

    def _targets(self, patches: torch.Tensor) -> torch.Tensor:
        """Regression targets in fp32: the voxels, or with ``norm_pix_loss`` each patch's z-scores."""
        target = patches.float()
        if self.norm_pix_loss:
            var, mean = torch.var_mean(target, dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    @staticmethod
    def _weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)
        weight = weight.float()
        return (per_patch * weight).sum() / weight.sum().clamp(min=1.0)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over masked (brain) patches only, in fp32 even under autocast.

        ``pred`` (B, L, C*p^3) and ``mask`` (B, L) as returned by :meth:`forward`.
        """
        return self._weighted_mse(pred, self._targets(self.patchify(imgs)), mask)

    def forward(
        self,
        imgs: torch.Tensor,
        brain_mask: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(loss, pred, mask)``: fp32 scalar, (B, L, C*p^3), (B, L) with 1 = masked brain patch.

        The loss equals ``forward_loss(imgs, pred, mask)`` but is computed on the decoded rows
        only (no targets, and no backward, for the patches outside the brain).
        """
        patches = self.patchify(imgs)
        latent, masking = self._encode(patches, imgs, brain_mask, mask_ratio, noise)
        rows = self._decode(latent, masking)
        ids = masking.ids_shuffle[:, : masking.length]
        rank = torch.arange(masking.length, device=rows.device)[None, :]
        weight = (rank >= masking.len_keep[:, None]) & (rank < masking.num_tokens[:, None])
        loss = self._weighted_mse(rows, self._targets(gather_tokens(patches, ids)), weight)
        return loss, self._to_grid(rows, masking), masking.mask


def check_mask_ratio(mask_ratio: float) -> None:
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
