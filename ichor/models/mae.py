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

from ichor.models.config import MAEConfig
from ichor.models.decoder import TransformerDecoder
from ichor.models.patching import brain_patches, patchify, unpatchify
from ichor.models.vit import ViTEncoder3D, check_has_brain, gather_tokens, init_weights, padding_mask


class Masking(NamedTuple):
    """One draw of ``random_masking``.

    ``ids_shuffle`` orders each scan's patches as: visible, masked brain (the targets), then
    the rest (masked non-brain patches when every patch is eligible, then non-eligible ones).
    ``mask`` is 1 for masked brain patches (hidden and reconstructed; the loss weight), 0 for
    visible and non-brain patches. Paddings are None when every scan has the same count.
    """

    ids_shuffle: torch.Tensor  # (B, L) long
    ids_restore: torch.Tensor  # (B, L) long, inverse permutation of ids_shuffle
    mask: torch.Tensor  # (B, L) float
    len_keep: torch.Tensor  # (B,) visible patches per scan
    num_tokens: torch.Tensor  # (B,) brain patches per scan (L when not brain-aware)
    keep: int  # encoder sequence length = max(len_keep)
    first_masked: int  # min(len_keep): decoder rows before it are visible in every scan
    length: int  # decoder sequence length = max(num_tokens)
    targets_end: int  # decoder rows from it on are targets in no scan (max over scans of keep + targets)
    keep_padding: torch.Tensor | None  # (B, keep) bool, True = real token
    token_padding: torch.Tensor | None  # (B, length) bool


class MaskedAutoencoderViT3D(nn.Module):
    """Masked autoencoder with a :class:`ViTEncoder3D` (``self.encoder``) and a light :class:`TransformerDecoder`.

    Args:
        config: encoder, decoder and objective (:class:`ichor.models.MAEConfig`).
        img_size: (D, H, W) input shape, each a multiple of ``config.patch_size``.
        grad_checkpointing: recompute blocks in backward (less memory, about 30 % more compute).
    """

    def __init__(self, config: MAEConfig, img_size: tuple[int, int, int], grad_checkpointing: bool = False) -> None:
        super().__init__()
        check_mask_ratio(config.mask_ratio)
        self.config = config
        self.mask_ratio = config.mask_ratio
        self.norm_pix_loss = config.norm_pix_loss
        self.brain_aware = config.brain_aware
        self.encoder = ViTEncoder3D(config, img_size, grad_checkpointing)
        self.decoder = TransformerDecoder(config, self.encoder.grid, grad_checkpointing)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_embed_dim))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE initialisation (xavier-uniform linears, unit LayerNorms, normal(0.02) mask token)."""
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def set_img_size(self, img_size: tuple[int, int, int]) -> None:
        """Adopt a new input shape: regenerate encoder and decoder position tables."""
        self.encoder.set_img_size(img_size)
        self.decoder.set_grid(self.encoder.grid)

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
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Masking]:
        """Per-scan random masking by sorting noise: the lowest-noise patches stay visible.

        Args:
            x: (B, L, D) patches or tokens.
            mask_ratio: fraction of each scan's (brain) patches to hide.
            noise: (B, L) values in [0, 1); drawn with ``torch.rand`` if None. Injecting it
                makes masks reproducible (e.g. a pure function of seed, epoch and batch).
            token_mask: (B, L) bool, patches eligible at all (brain); None = all.
            targets: (B, L) bool, patches that are reconstruction targets when masked (brain);
                None = every eligible one. Masked non-targets weigh 0 in ``mask`` and follow
                the targets in ``ids_shuffle``, so that the targets are a short run of rows.

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
        rank = torch.arange(length, device=x.device)[None, :]
        masked = (rank >= len_keep[:, None]) & (rank < num_tokens[:, None])
        if targets is None:
            targets_end = num_tokens
        else:
            hit = masked & targets.gather(1, ids_shuffle)
            # Visible and target rows first, then the rest; stable: each group keeps its order.
            rest = (rank >= len_keep[:, None]) & ~hit
            ids_shuffle = ids_shuffle.gather(1, torch.argsort(rest.to(torch.uint8), dim=1, stable=True))
            targets_end = len_keep + hit.sum(dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        shuffled_mask = (rank >= len_keep[:, None]) & (rank < targets_end[:, None])
        mask = torch.gather(shuffled_mask.float(), 1, ids_restore)

        keeps, sizes, ends = torch.stack([len_keep, num_tokens, targets_end]).tolist()  # one host sync
        check_has_brain(sizes)
        keep, longest = max(keeps), max(sizes)
        masking = Masking(
            ids_shuffle=ids_shuffle,
            ids_restore=ids_restore,
            mask=mask,
            len_keep=len_keep,
            num_tokens=num_tokens,
            keep=keep,
            first_masked=min(keeps),
            length=longest,
            targets_end=max(ends),
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
        """Mask, then embed and encode only the visible patches: (B, keep, C) latent.

        Without ``brain_aware`` every patch can be visible or masked, but only masked *brain*
        patches are reconstruction targets: outside the brain, and in regions the scan did not
        cover, the voxels are unknown (stored as NaN, fed as 0), not zero CBF to be learned.
        """
        brain = self.brain_patches(imgs, brain_mask)
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        if self.brain_aware:
            visible, masking = self.random_masking(self.patchify(imgs), ratio, noise, token_mask=brain)
        else:
            visible, masking = self.random_masking(self.patchify(imgs), ratio, noise, targets=brain)
        x = self.encoder.embed(visible, masking.ids_shuffle[:, : masking.keep])
        return self.encoder.forward_blocks(x, masking.keep_padding), masking

    def forward_decoder(self, latent: torch.Tensor, masking: Masking, loss_rows: slice | None = None) -> torch.Tensor:
        """Visible latents + mask tokens for the masked brain patches -> (B, length, C*p^3) predictions.

        The decoder sees only brain tokens, in the masking's shuffled order (attention does not
        care; positions come from the gathered table), and its rows stay in that order: row
        ``j`` of scan ``i`` predicts patch ``ids_shuffle[i, j]``. :meth:`to_grid` puts them in
        grid order; the loss reads the masked ones where they are (``loss_rows``: only those
        carry a gradient).
        """
        x = self.decoder.embed(latent)
        x = F.pad(x, (0, 0, 0, masking.length - masking.keep))
        visible = padding_mask(masking.len_keep, masking.length).unsqueeze(-1)
        x = torch.where(visible, x, self.mask_token.to(x.dtype))
        x = x + self.decoder.positions(x, masking.ids_shuffle[:, : masking.length])
        return self.decoder(x, masking.token_padding, loss_rows)

    def to_grid(self, pred: torch.Tensor, masking: Masking) -> torch.Tensor:
        """Decoder rows (B, length, C*p^3) -> (B, L, C*p^3) in grid order; rows of patches not decoded (non-brain) are zero.

        A gather of whole rows (each grid position reads its decoder row), not a scatter.
        """
        rows = masking.ids_restore  # grid position -> its decoder row
        if masking.token_padding is None and masking.length == self.num_patches:  # every patch decoded
            return gather_tokens(pred, rows)
        decoded = rows < masking.num_tokens[:, None]
        return gather_tokens(pred, rows.clamp(max=masking.length - 1)).mul_(decoded.unsqueeze(-1))

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean squared error over masked (brain) patches only, in fp32 even under autocast.

        ``pred`` (B, K, C*p^3) predicts the patches at grid positions ``ids`` (B, K), and
        ``mask`` (B, K) weighs them (1 = masked brain patch); without ``ids``, ``pred`` and
        ``mask`` cover the whole grid in order, as :meth:`forward` returns them. The target is
        the voxels or, with ``norm_pix_loss``, each patch's z-scores: computed for those
        patches only.
        """
        target = (self.patchify(imgs) if ids is None else patchify(imgs, self.patch_size, ids)).float()
        if self.norm_pix_loss:  # two passes: as exact as var_mean, and several times faster on a CPU
            target = target - target.mean(dim=-1, keepdim=True)
            var = torch.linalg.vector_norm(target, dim=-1, keepdim=True).square() / (target.shape[-1] - 1)
            target = target / (var + 1e-6).sqrt()
        per_patch = F.mse_loss(pred.float(), target, reduction="none").mean(dim=-1)
        weight = mask.float()
        return (per_patch * weight).sum() / weight.sum().clamp(min=1.0)

    def forward(
        self,
        imgs: torch.Tensor,
        brain_mask: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(loss, pred, mask)``: fp32 scalar, (B, L, C*p^3), (B, L) with 1 = masked brain patch.

        The loss reads the decoder rows that hold a target in some scan (``first_masked`` to
        ``targets_end``; bounds from the masking's one host sync): targets are cut from the
        image for those patches only, and visible, padding and non-brain rows among them weigh
        0. It equals ``forward_loss(imgs, pred, mask)`` on the returned full-grid ``pred``.
        """
        latent, masking = self.forward_encoder(imgs, brain_mask, mask_ratio, noise)
        rows = slice(masking.first_masked, masking.targets_end)
        pred = self.forward_decoder(latent, masking, rows)
        ids = masking.ids_shuffle[:, rows]
        loss = self.forward_loss(imgs, pred[:, rows], masking.mask.gather(1, ids), ids)
        return loss, self.to_grid(pred, masking), masking.mask


def check_mask_ratio(mask_ratio: float) -> None:
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
