"""Analytic cost of one MAE step, to size runs before renting GPUs.

Counts matrix multiplies only (2 FLOPs per multiply-add); norms, softmax and the optimiser
are a few percent. Backward is taken as twice the forward.
"""

from __future__ import annotations

import math

from ichor.models.mae import MaskedAutoencoderViT3D


def _block_flops(tokens: int, width: int, hidden: int) -> int:
    projections = 2 * tokens * (4 * width * width + 2 * width * hidden)  # qkv + proj + MLP
    attention = 4 * tokens * tokens * width  # q @ k^T and attn @ v
    return projections + attention


def mae_flops(model: MaskedAutoencoderViT3D, brain_patches: int | None = None) -> dict[str, int]:
    """Tokens and FLOPs per scan for one training step of ``model``.

    Args:
        brain_patches: brain patches per scan; used when the model is brain-aware
            (None = all patches, i.e. the classic MAE cost).
    """
    enc = model.encoder
    grid_tokens = model.num_patches
    tokens = brain_patches if (model.brain_aware and brain_patches is not None) else grid_tokens
    visible = max(1, math.floor(tokens * (1.0 - model.mask_ratio)))
    voxels = enc.in_chans * enc.patch_size**3
    dec = model.decoder
    width, dec_width, dec_depth = enc.embed_dim, dec.embed.out_features, len(dec.blocks)
    hidden = enc.blocks[0].mlp[0].out_features
    dec_hidden = dec.blocks[0].mlp[0].out_features if dec_depth else 0

    encoder = 2 * visible * voxels * width + enc.depth * _block_flops(visible, width, hidden)
    decoder = (
        2 * visible * width * dec_width
        + dec_depth * _block_flops(tokens, dec_width, dec_hidden)
        + 2 * tokens * dec_width * voxels
    )
    forward = encoder + decoder
    return {
        "grid_tokens": grid_tokens,
        "tokens": tokens,
        "encoder_tokens": visible,
        "decoder_tokens": tokens,
        "forward_flops": forward,
        "train_step_flops": 3 * forward,
    }
