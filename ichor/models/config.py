"""The model arguments, declared once: the constructors, the presets, ``Backbone``, ``encoder.json``
and the MONAI import all read and write these dataclasses (as nanoGPT's ``GPTConfig``).

The input shape is not part of them: weights are shape-independent (position tables are
regenerated or interpolated), so ``img_size`` is an argument of the networks beside the config.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from ichor.models.pos_embed import POS_EMBEDS

Config = TypeVar("Config", bound="ViTConfig")


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """A :class:`ichor.models.ViTEncoder3D`: what ``encoder.json`` records as ``architecture``.

    Args:
        patch_size: cubic patch edge in voxels.
        in_chans: input channels (1 for CBF).
        embed_dim, depth, num_heads, mlp_ratio: Transformer width, blocks, heads, MLP expansion.
        min_brain_fraction: a patch counts as brain when at least this fraction of its voxels
            are brain (and at least one is); 0 means any brain voxel.
        pos_embed: "sincos" (fixed, regenerated for any grid) or "learned" (a parameter,
            interpolated to a new grid; imported encoders).
        cls_token: prepend a learned token before the blocks (imported encoders trained with one).
        norm_eps: LayerNorm epsilon (1e-6 as in MAE; MONAI's ViT uses PyTorch's 1e-5).
    """

    patch_size: int = 16
    in_chans: int = 1
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    min_brain_fraction: float = 0.0
    pos_embed: str = "sincos"
    cls_token: bool = False
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {', '.join(POS_EMBEDS)}, got {self.pos_embed!r}")

    def encoder(self) -> ViTConfig:
        """The encoder's part of this config (all of it for a ``ViTConfig``; an ``MAEConfig`` adds a decoder)."""
        return ViTConfig(**{f.name: getattr(self, f.name) for f in fields(ViTConfig)})


@dataclass(frozen=True, kw_only=True)
class MAEConfig(ViTConfig):
    """A :class:`ichor.models.MaskedAutoencoderViT3D`: its encoder's fields, its decoder and its objective.

    Args:
        decoder_embed_dim, decoder_depth, decoder_num_heads: decoder width, blocks, heads.
        norm_pix_loss: regress each patch normalised by its own mean and variance.
        mask_ratio: default fraction of (brain) patches hidden from the encoder, in (0, 1).
        brain_aware: drop non-brain patches from encoder, decoder and loss; False gives the
            classic MAE over the whole grid (the loss still counts brain patches only).
    """

    decoder_embed_dim: int = 128
    decoder_depth: int = 4
    decoder_num_heads: int = 4
    norm_pix_loss: bool = True
    mask_ratio: float = 0.75
    brain_aware: bool = True


#: The MAE objective: arguments of the pre-training method (``MAEPretrainer``), not of the network's shape.
OBJECTIVE = ("norm_pix_loss", "mask_ratio", "brain_aware")


def updated(config: Config, changes: Mapping[str, Any], where: str, keys: Collection[str] | None = None) -> Config:
    """A copy of ``config`` with ``changes``; a key outside ``keys`` (default: its fields) is refused by name."""
    known = {f.name for f in fields(config)} if keys is None else set(keys)
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for {type(config).__name__}; "
            f"known: {', '.join(sorted(known))}"
        )
    return replace(config, **changes)
