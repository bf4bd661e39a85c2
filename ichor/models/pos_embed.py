"""3D position embeddings: fixed sine-cosine tables, and resizing of learned ones.

ICHOR's own encoders use fixed tables, so that a pre-trained encoder can be used at another
input shape: the table is a pure function of the patch grid and is simply regenerated. Imported
encoders (MONAI ViTs) bring learned tables, which can only be interpolated to a new grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POS_EMBEDS = ("sincos", "learned")


def resize_table(table: torch.Tensor, grid: tuple[int, ...], new_grid: tuple[int, ...]) -> torch.Tensor:
    """(1, prod(grid), C) table in row-major grid order -> (1, prod(new_grid), C), trilinearly interpolated."""
    channels = table.shape[-1]
    volume = table.reshape(1, *grid, channels).permute(0, 4, 1, 2, 3)
    resized = F.interpolate(volume.float(), size=tuple(new_grid), mode="trilinear", align_corners=False)
    return resized.permute(0, 2, 3, 4, 1).reshape(1, -1, channels).to(table.dtype)


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) positions -> (N, dim) embedding: dim/2 sines then dim/2 cosines, as in the Transformer."""
    if dim % 2:
        raise ValueError(f"1D sin-cos embedding needs an even dim, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2)
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(grid_size: tuple[int, int, int], dim: int) -> torch.Tensor:
    """(D*H*W, dim) embedding of a patch grid, in the row-major order of ``patchify``.

    Each axis gets the same even share ``2 * (dim // 6)`` of the channels; the few channels
    left over when ``dim`` is not a multiple of 6 stay zero (they carry no position).
    """
    share = 2 * (dim // 6)
    if share == 0:
        raise ValueError(f"3D sin-cos embedding needs dim >= 6, got {dim}")
    axes = torch.meshgrid(*(torch.arange(n) for n in grid_size), indexing="ij")
    parts = [sincos_1d(axis.reshape(-1), share) for axis in axes]
    table = torch.zeros(axes[0].numel(), dim, dtype=torch.float64)
    table[:, : 3 * share] = torch.cat(parts, dim=1)
    return table.float()
