"""3D ViT encoder and masked autoencoder for CBF maps, in plain PyTorch."""

from ichor.models.config import MAEConfig, ViTConfig
from ichor.models.decoder import TransformerDecoder
from ichor.models.flops import mae_flops
from ichor.models.mae import MaskedAutoencoderViT3D, Masking
from ichor.models.patching import brain_patches, patchify, unpatchify
from ichor.models.pos_embed import sincos_3d
from ichor.models.presets import PRESETS, Backbone, build_encoder, build_mae, get_preset
from ichor.models.vit import PatchEmbed3D, ViTEncoder3D

__all__ = [
    "PRESETS",
    "Backbone",
    "MAEConfig",
    "MaskedAutoencoderViT3D",
    "Masking",
    "PatchEmbed3D",
    "TransformerDecoder",
    "ViTConfig",
    "ViTEncoder3D",
    "brain_patches",
    "build_encoder",
    "build_mae",
    "get_preset",
    "mae_flops",
    "patchify",
    "sincos_3d",
    "unpatchify",
]
