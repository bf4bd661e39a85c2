"""Existing brain encoders as ICHOR encoders: MONAI ``ViT`` and ``MaskedAutoEncoderViT`` state dicts.

The key map is here and only here (:data:`BLOCK_KEYS`, :func:`map_monai_state`): every source key is mapped,
or dropped by name (:data:`DROPPED`), or refused, and the result loads with ``strict=True``. How each part
maps: docs/tutorials/share-encoder.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import torch

from ichor.data.datamodule import Normalization
from ichor.data.harmonise import HarmonisationSettings
from ichor.models.config import ViTConfig
from ichor.models.hub import sha256_file
from ichor.models.vit import ViTEncoder3D
from ichor.models.weights import WeightsError, check_export_target, encoder_metadata, load_state, write_export

FORMATS = ("monai-vit", "monai-mae")
MONAI_NORM_EPS = 1e-5
PATCH_KEY = "patch_embedding.patch_embeddings.weight"
POS_KEY = "patch_embedding.position_embeddings"
ASSUMED = {"activation": "GELU (exact)", "dropout": "none at inference"}

# MONAI TransformerBlock key -> ICHOR Block key (``blocks.{i}.`` in front of both).
BLOCK_KEYS = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.qkv.weight": "attn.qkv.weight",
    "attn.qkv.bias": "attn.qkv.bias",
    "attn.out_proj.weight": "attn.proj.weight",
    "attn.out_proj.bias": "attn.proj.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.linear1.weight": "mlp.0.weight",
    "mlp.linear1.bias": "mlp.0.bias",
    "mlp.linear2.weight": "mlp.2.weight",
    "mlp.linear2.bias": "mlp.2.bias",
}
# MONAI key -> ICHOR key, outside the blocks (the final LayerNorm depends on the format).
TOP_KEYS = {
    PATCH_KEY: "patch_embed.proj.weight",
    "patch_embedding.patch_embeddings.bias": "patch_embed.proj.bias",
    POS_KEY: "pos_embed",
    "cls_token": "cls_token",
}
FINAL_NORM = {"monai-vit": "norm.", "monai-mae": "blocks.{depth}."}  # the MAE's is the last of nn.Sequential blocks
# Parts an encoder does not keep, by MONAI key pattern, with the reason recorded.
DROPPED = {
    r"blocks\.\d+\.norm_cross_attn\.(weight|bias)": "cross-attention LayerNorm, unused without cross-attention",
    r"classification_head\..*": "ViT classification head (a task head, not the encoder)",
    r"(decoder_.*|mask_tokens)": "MAE decoder (the pretext task)",
}
BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def read_state(path: Path, prefix: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The MONAI network's state dict inside a checkpoint (a bare state dict, or under ``state_dict`` /
    ``model`` / ``network``, possibly prefixed by a wrapper module); returns it with the prefix stripped."""
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickled objects besides tensors: refused rather than executed
        raise WeightsError(
            f"{path}: not loadable as tensors only ({type(error).__name__}); save its state dict "
            "with torch.save(model.state_dict(), path) and import that"
        ) from error
    for key in ("state_dict", "model", "network"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path}: holds a {type(checkpoint).__name__}, not a state dict")
    if prefix is None:
        found = sorted(k[: -len(PATCH_KEY)] for k in checkpoint if k.endswith(PATCH_KEY))
        if not found:
            perceptron = any(".patch_embeddings." in k and "weight" in k for k in checkpoint)
            raise WeightsError(
                f"{path}: no MONAI conv patch embedding ('{PATCH_KEY}')"
                + ("; proj_type='perceptron' is not supported" if perceptron else "")
            )
        if len(found) > 1:
            raise WeightsError(f"{path}: several MONAI ViTs in one checkpoint, prefixes {found}: choose one (--prefix)")
        prefix = found[0]
    state = {k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}
    if PATCH_KEY not in state:
        raise WeightsError(f"{path}: no '{prefix}{PATCH_KEY}' key")
    return state, prefix


def infer_architecture(state: dict[str, torch.Tensor], num_heads: int, source: str) -> ViTConfig:
    """The encoder's config read from the weights; differences refused by name."""
    patch = state[PATCH_KEY]
    if patch.dim() != 5:
        raise WeightsError(f"{source}: patch embedding of shape {tuple(patch.shape)} is not a 3D convolution")
    hidden, in_chans, *kernel = patch.shape
    if len(set(kernel)) != 1:
        raise WeightsError(f"{source}: patch size {tuple(kernel)} is not cubic; ICHOR's ViT uses cubic patches")
    if POS_KEY not in state:
        raise WeightsError(f"{source}: no position embeddings ('{POS_KEY}')")
    depth = len({int(m[1]) for k in state if (m := BLOCK.match(k)) and m[2] == "attn.qkv.weight"})
    mlp_in, mlp_out = state["blocks.0.mlp.linear1.weight"].shape[0], state["blocks.0.mlp.linear2.weight"].shape[1]
    if mlp_in != mlp_out:
        raise WeightsError(f"{source}: MLP {mlp_in} -> {mlp_out} wide: a gated activation (GEGLU), not supported")
    if hidden % num_heads:
        raise WeightsError(f"{source}: width {hidden} is not divisible by {num_heads} heads (--num-heads)")
    return ViTConfig(
        patch_size=int(kernel[0]),
        in_chans=int(in_chans),
        embed_dim=int(hidden),
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_in / hidden,
        pos_embed="learned",
        cls_token="cls_token" in state,
        norm_eps=MONAI_NORM_EPS,
    )


def map_monai_state(
    state: dict[str, torch.Tensor], fmt: str, depth: int, source: str
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """MONAI keys -> ICHOR keys; returns the mapped state and how many keys were dropped, per reason."""
    final = FINAL_NORM[fmt].format(depth=depth)
    mapped: dict[str, torch.Tensor] = {}
    dropped: dict[str, int] = {}
    unknown = []
    for key, value in state.items():
        block = BLOCK.match(key)
        if key in TOP_KEYS:
            mapped[TOP_KEYS[key]] = value
        elif key.startswith(final) and key[len(final) :] in ("weight", "bias"):
            mapped[f"norm.{key[len(final) :]}"] = value
        elif block and int(block[1]) < depth and block[2] in BLOCK_KEYS:
            mapped[f"blocks.{block[1]}.{BLOCK_KEYS[block[2]]}"] = value
        elif reason := next((why for pattern, why in DROPPED.items() if re.fullmatch(pattern, key)), None):
            dropped[reason] = dropped.get(reason, 0) + 1
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(
            f"{source}: MONAI key(s) with no counterpart in ICHOR's ViTEncoder3D (the architectures differ): "
            + ", ".join(sorted(unknown))
            + f"; is --format {fmt} right?"
        )
    hidden = mapped["patch_embed.proj.weight"].shape[0]
    mapped["patch_embed.proj.weight"] = mapped["patch_embed.proj.weight"].reshape(hidden, -1)  # conv kernel -> linear
    for i in range(depth):  # qkv_bias=False in MONAI: the zero bias is the same map
        mapped.setdefault(f"blocks.{i}.attn.qkv.bias", torch.zeros(3 * hidden))
    return mapped, dropped


def grid_of(
    state: dict[str, torch.Tensor], patch_size: int, img_size: tuple[int, int, int] | None, source: str
) -> tuple[int, int, int]:
    """The source's input shape: given, or the cube its position table implies."""
    rows = state[POS_KEY].shape[1]
    if img_size is None:
        side = round(rows ** (1 / 3))
        if side**3 != rows:
            raise WeightsError(
                f"{source}: {rows} position rows are not a cube: give the source's input shape (--img-size)"
            )
        return (side * patch_size,) * 3
    grid = [n // patch_size for n in img_size]
    if any(n % patch_size for n in img_size) or grid[0] * grid[1] * grid[2] != rows:
        raise WeightsError(
            f"{source}: input shape {tuple(img_size)} with patch {patch_size} does not give the {rows} "
            "positions of its table (--img-size)"
        )
    return tuple(int(n) for n in img_size)


def import_monai(
    checkpoint: str | Path,
    out: str | Path,
    fmt: str,
    num_heads: int,
    spacing: float | tuple[float, float, float],
    normalization: str,
    img_size: tuple[int, int, int] | None = None,
    shape: tuple[int, int, int] | None = None,
    cbf_scale: float = 100.0,
    prefix: str | None = None,
    licence: str | None = None,
    citation: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an ICHOR export folder of a MONAI ViT / MAE encoder checkpoint.

    ``img_size`` is the source's input shape (default: the cube its position table implies);
    ``shape`` the grid CBF maps are harmonised to (default ``img_size``; otherwise the position
    table is interpolated to it). ``spacing`` and ``normalization`` say how scans are prepared
    for it (see ``CBFDataModule``), since a MONAI checkpoint does not record them.
    """
    if fmt not in FORMATS:
        raise WeightsError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if normalization not in get_args(Normalization):
        raise WeightsError(f"normalization {normalization!r} is not one of {', '.join(get_args(Normalization))}")
    path = Path(checkpoint)
    check_export_target(out, overwrite)  # before any work
    state, prefix = read_state(path, prefix)
    config = infer_architecture(state, num_heads, str(path))
    source_shape = grid_of(state, config.patch_size, img_size, str(path))
    mapped, dropped = map_monai_state(state, fmt, config.depth, str(path))
    encoder = ViTEncoder3D(config, source_shape)
    load_state(encoder, mapped, path)
    target = tuple(int(n) for n in shape) if shape is not None else source_shape
    encoder.set_img_size(target)  # interpolates the table when the grid differs
    settings = HarmonisationSettings.create(spacing, target).as_dict()
    harmonisation = {**settings, "normalization": normalization}
    if normalization == "scale":
        harmonisation["cbf_scale"] = cbf_scale
    record = {
        "format": fmt,
        "checkpoint": str(path.resolve()),
        "sha256": sha256_file(path),
        "prefix": prefix,
        "img_size": list(source_shape),
        "position_table": "kept" if target == source_shape else f"interpolated from {list(source_shape)}",
        "mapped": len(mapped),
        "dropped": dropped,
        "assumed": ASSUMED,
    }
    metadata = encoder_metadata(
        encoder.config,
        encoder.img_size,
        harmonisation,
        {"method": f"unknown: imported from {fmt} (see source)"},
        licence,
        citation or "see the source checkpoint's authors",
        source=record,
    )
    return write_export(encoder.state_dict(), metadata, out, overwrite)
