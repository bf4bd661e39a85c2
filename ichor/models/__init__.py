"""3D ViT encoder and masked autoencoder for CBF maps, in plain PyTorch."""

from ichor.models.flops import mae_flops
from ichor.models.mae import MaskedAutoencoderViT3D, Masking
from ichor.models.patching import brain_patches, patchify, unpatchify
from ichor.models.pos_embed import sincos_3d
from ichor.models.presets import (
    ARCHITECTURES,
    MODELS,
    build_mae,
    mae_vit_base,
    mae_vit_large,
    mae_vit_micro,
    mae_vit_small,
    mae_vit_tiny,
)
from ichor.models.vit import PatchEmbed3D, ViTEncoder3D

__all__ = [
    "ARCHITECTURES",
    "MODELS",
    "MaskedAutoencoderViT3D",
    "Masking",
    "PatchEmbed3D",
    "ViTEncoder3D",
    "brain_patches",
    "build_mae",
    "mae_flops",
    "mae_vit_base",
    "mae_vit_large",
    "mae_vit_micro",
    "mae_vit_small",
    "mae_vit_tiny",
    "patchify",
    "sincos_3d",
    "unpatchify",
]
