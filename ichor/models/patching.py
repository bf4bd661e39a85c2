"""Cutting volumes into cubic patches and back, and finding the patches that hold brain.

Within a patch the voxels are ordered (channel, depth, height, width), so a linear patch
embedding's weight reshaped to (embed_dim, C, p, p, p) is exactly a ``Conv3d(stride=p)`` kernel.
"""

from __future__ import annotations

import math

import torch


def grid_size(img_size: tuple[int, ...], patch_size: int) -> tuple[int, int, int]:
    """Patch grid of a (D, H, W) volume; a ValueError that says what to change if it does not tile."""
    img_size = tuple(int(n) for n in img_size)
    if len(img_size) != 3 or any(n % patch_size or n <= 0 for n in img_size):
        raise ValueError(
            f"input spatial shape {img_size} is not a multiple of the patch size {patch_size} "
            f"on every axis: pad or crop the data to one (the datamodule's `shape`, e.g. "
            f"{tuple(max(1, math.ceil(n / patch_size)) * patch_size for n in img_size)})"
        )
    return tuple(n // patch_size for n in img_size)  # type: ignore[return-value]


def patchify(imgs: torch.Tensor, patch_size: int, ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, L, C * p^3), patches in row-major (d, h, w) grid order.

    With ``ids`` (B, K) grid positions, only those patches, in that order: (B, K, C * p^3),
    read straight from the image (the other patches are never copied; fixed shapes, no host sync).
    """
    if imgs.dim() != 5:
        raise ValueError(f"expected a (B, C, D, H, W) batch, got shape {tuple(imgs.shape)}")
    b, c = imgs.shape[:2]
    d, h, w = grid_size(imgs.shape[2:], patch_size)
    p = patch_size
    x = imgs.reshape(b, c, d, p, h, p, w, p)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
    if ids is None:
        return x.reshape(b, d * h * w, c * p**3)
    scans = torch.arange(b, device=ids.device)[:, None]
    return x[scans, ids // (h * w), ids // w % h, ids % w].reshape(b, ids.shape[1], c * p**3)


def unpatchify(x: torch.Tensor, patch_size: int, grid: tuple[int, int, int], in_chans: int = 1) -> torch.Tensor:
    """(B, L, C * p^3) -> (B, C, D, H, W); the exact inverse of :func:`patchify`."""
    b = x.shape[0]
    d, h, w = grid
    p = patch_size
    if x.shape[1] != d * h * w or x.shape[2] != in_chans * p**3:
        raise ValueError(
            f"patches of shape {tuple(x.shape)} do not fit grid {grid} with patch {p} and {in_chans} channel(s)"
        )
    x = x.reshape(b, d, h, w, in_chans, p, p, p)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, in_chans, d * p, h * p, w * p)


def brain_patches(brain_mask: torch.Tensor, patch_size: int, min_fraction: float = 0.0) -> torch.Tensor:
    """(B, 1, D, H, W) brain mask (bool or 0/1; channel 0 is used) -> (B, L) bool: brain patches.

    A patch counts when at least ``min_fraction`` of its voxels are brain, and always needs
    one brain voxel (so ``min_fraction=0`` means "any brain voxel").
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    if brain_mask.dim() != 5:
        raise ValueError(f"expected a (B, 1, D, H, W) brain mask, got shape {tuple(brain_mask.shape)}")
    b = brain_mask.shape[0]
    d, h, w = grid_size(brain_mask.shape[2:], patch_size)
    p = patch_size
    voxels = brain_mask[:, 0] if brain_mask.dtype == torch.bool else brain_mask[:, 0] != 0
    # Count brain voxels per patch straight from the strided view (no patchified copy), the
    # contiguous axis first: several times faster than one reduction over the three.
    counts = voxels.reshape(b, d, p, h, p, w, p).sum(dim=-1, dtype=torch.int32).sum(dim=(2, 4))
    counts = counts.reshape(b, d * h * w)
    needed = max(1, math.ceil(min_fraction * p**3))
    return counts >= needed
