"""Encoder tokens -> one feature vector per scan.

Poolings:
- ``brain_mean`` (the default) encodes brain patches only and averages them: background
  patches carry no CBF, and a mean over the whole grid would depend on head size and field of
  view.
- ``mean`` encodes every patch and averages all of them (closest to a plain ViT's global pool).
- ``max`` encodes brain patches and takes the per-channel maximum.
- ``region`` encodes brain patches and averages them per region of the harmonised grid, cut
  into ``regions`` parts along each axis (2: octants), so that a localised perfusion pattern
  is not averaged away. Features are the regions' means side by side, region-major (in
  grid order, depth slowest). A region without brain tokens (outside a slab acquisition, or
  below ``min_brain_fraction``) takes the scan's brain mean: it says nothing about that
  region, and the brain mean keeps the features on the tokens' scale, where zeros would look
  like a strong regional signal.

``blocks=k`` reads the last ``k`` Transformer blocks instead of the last only, each through the
encoder's final LayerNorm, concatenated on channels (the linear evaluation of DINO and DINOv2,
``n_last_blocks=4``; I-JEPA's probe of its largest models). Concatenation rather than an average:
a linear probe on the concatenation can weigh the blocks as it likes (an average is the special
case of equal weights), and MAE's most linearly readable features often sit before the last
block, which the reconstruction objective specialises; the cost, ``k`` times the width, is what
the probe's cross-validated regularisation is for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from ichor.models import ViTEncoder3D

Pooling = Literal["brain_mean", "mean", "max", "region"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
REGIONS = 2  # parts per axis of the grid for ``region`` pooling: 8 octants


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")


def feature_width(embed_dim: int, pooling: Pooling, blocks: int = 1, regions: int = REGIONS) -> int:
    """Length of one scan's feature vector."""
    return embed_dim * blocks * (regions**3 if pooling == "region" else 1)


def pool_tokens(tokens: torch.Tensor, token_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(B, L, C) tokens with (B, L) bool validity -> (B, C); only valid tokens count (not for ``region``)."""
    check_pooling(pooling)
    if pooling == "region":
        raise ValueError("region pooling needs the grid: use pool_regions")
    if pooling == "max":
        return tokens.masked_fill(~token_mask.unsqueeze(-1), float("-inf")).amax(1)
    weights = token_mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1)


def region_index(grid: tuple[int, int, int], regions: int) -> torch.Tensor:
    """(L,) region of each grid position, grid-ordered; axis parts as equal as the grid allows."""
    if regions < 1 or regions > min(grid):
        raise ValueError(f"regions must be between 1 and the smallest grid side {min(grid)}, got {regions}")
    parts = [torch.arange(n) * regions // n for n in grid]
    d, h, w = torch.meshgrid(*parts, indexing="ij")
    return ((d * regions + h) * regions + w).reshape(-1)


def pool_regions(
    tokens: torch.Tensor, token_mask: torch.Tensor, grid: tuple[int, int, int], regions: int = REGIONS
) -> torch.Tensor:
    """(B, L, C) grid-ordered tokens -> (B, regions^3 * C): the mean of valid tokens per region.

    A region without valid tokens takes the mean of all valid tokens (see the module docstring).
    """
    index = region_index(grid, regions).to(tokens.device)
    one_hot = F.one_hot(index, regions**3).to(tokens.dtype)  # (L, R)
    weights = token_mask.to(tokens.dtype).unsqueeze(-1) * one_hot  # (B, L, R)
    counts = weights.sum(1)  # (B, R)
    sums = torch.einsum("blr,blc->brc", weights, tokens)
    overall = pool_tokens(tokens, token_mask, "brain_mean").unsqueeze(1)
    means = torch.where(counts.unsqueeze(-1) > 0, sums / counts.clamp_min(1).unsqueeze(-1), overall)
    return means.flatten(1)


@contextlib.contextmanager
def last_blocks(encoder: ViTEncoder3D, blocks: int) -> Iterator[None]:
    """While active, the encoder's output tokens are its last ``blocks`` blocks' outputs, each through
    the final LayerNorm, concatenated on channels (``blocks=1``: unchanged).

    Forward hooks, so that every path through the encoder (brain tokens, ``cls`` token, padding)
    stays the encoder's own: the blocks' outputs are recorded, and the final norm's output is
    replaced by the normed, concatenated record.
    """
    if not 1 <= blocks <= len(encoder.blocks):
        raise ValueError(f"blocks must be between 1 and the encoder's depth {len(encoder.blocks)}, got {blocks}")
    if blocks == 1:
        yield
        return
    outputs: list[torch.Tensor] = []
    norm = encoder.norm

    def record(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        outputs.append(output)

    def concatenate(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        normed = [F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps) for x in outputs]
        outputs.clear()
        return torch.cat(normed, dim=-1)

    handles = [block.register_forward_hook(record) for block in encoder.blocks[-blocks:]]
    handles.append(norm.register_forward_hook(concatenate))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def encode_tokens(
    encoder: ViTEncoder3D, images: torch.Tensor, brain_mask: torch.Tensor | None, blocks: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid-ordered tokens (B, L, blocks * C) and their validity (B, L): brain tokens only when a mask is given."""
    with last_blocks(encoder, blocks):
        return encoder.forward_features(images, brain_mask)


def encode(
    encoder: ViTEncoder3D,
    images: torch.Tensor,
    brain_mask: torch.Tensor | None,
    pooling: Pooling,
    blocks: int = 1,
    regions: int = REGIONS,
) -> torch.Tensor:
    """Pooled features (B, feature_width) of a batch: the one path shared by training and ``ichor embed``."""
    check_pooling(pooling)
    tokens, token_mask = encode_tokens(encoder, images, None if pooling == "mean" else brain_mask, blocks)
    if pooling == "region":
        return pool_regions(tokens, token_mask, encoder.grid, regions)
    return pool_tokens(tokens, token_mask, pooling)
