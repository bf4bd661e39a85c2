"""Encoder tokens -> one feature vector per scan.

``brain_mean`` (the default) encodes brain patches only and averages them: background
patches carry no CBF, and a mean over the whole grid would depend on head size and field of
view. ``mean`` encodes every patch and averages all of them (closest to a plain ViT's
global pool); ``max`` encodes brain patches and takes the per-channel maximum.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from ichor.models import ViTEncoder3D

Pooling = Literal["brain_mean", "mean", "max"]
POOLINGS: tuple[str, ...] = get_args(Pooling)


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")


def pool_tokens(tokens: torch.Tensor, token_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(B, L, C) tokens with (B, L) bool validity -> (B, C); only valid tokens count."""
    check_pooling(pooling)
    if pooling == "max":
        return tokens.masked_fill(~token_mask.unsqueeze(-1), float("-inf")).amax(1)
    weights = token_mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1)


def encode(
    encoder: ViTEncoder3D, images: torch.Tensor, brain_mask: torch.Tensor | None, pooling: Pooling
) -> torch.Tensor:
    """Pooled features (B, embed_dim) of a batch: the one path shared by training and ``ichor embed``."""
    check_pooling(pooling)
    tokens, token_mask = encoder.forward_features(images, None if pooling == "mean" else brain_mask)
    return pool_tokens(tokens, token_mask, pooling)
