"""Named MAE sizes, so that configs can pick a model by name (``build_mae("mae_vit_base", ...)``).

Widths follow the ViT family; decoders follow the 3D MAE literature (base: MONAI's default
384/4/12, large: MAE's 512/8/16). ``micro`` exists for CPU demos and tests.
"""

from __future__ import annotations

from typing import Any, Callable

from ichor.models.mae import MaskedAutoencoderViT3D

# name -> (embed_dim, depth, num_heads, decoder_embed_dim, decoder_depth, decoder_num_heads)
ARCHITECTURES: dict[str, tuple[int, int, int, int, int, int]] = {
    "mae_vit_micro": (96, 4, 3, 64, 2, 2),
    "mae_vit_tiny": (192, 12, 3, 128, 4, 4),
    "mae_vit_small": (384, 12, 6, 256, 4, 8),
    "mae_vit_base": (768, 12, 12, 384, 4, 12),
    "mae_vit_large": (1024, 24, 16, 512, 8, 16),
}


def _build(name: str, img_size, patch_size: int, mask_ratio: float, kwargs: dict[str, Any]) -> MaskedAutoencoderViT3D:
    keys = ("embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth", "decoder_num_heads")
    arch = dict(zip(keys, ARCHITECTURES[name]))
    arch.update(kwargs)  # explicit keywords (e.g. decoder_depth) override the preset
    return MaskedAutoencoderViT3D(img_size=img_size, patch_size=patch_size, mask_ratio=mask_ratio, **arch)


def mae_vit_micro(img_size, patch_size: int = 16, mask_ratio: float = 0.75, **kwargs: Any) -> MaskedAutoencoderViT3D:
    """Encoder 96 wide, 4 blocks, 3 heads; decoder 64 wide, 2 blocks, 2 heads. CPU demos and tests."""
    return _build("mae_vit_micro", img_size, patch_size, mask_ratio, kwargs)


def mae_vit_tiny(img_size, patch_size: int = 16, mask_ratio: float = 0.75, **kwargs: Any) -> MaskedAutoencoderViT3D:
    """Encoder 192 wide, 12 blocks, 3 heads (ViT-Ti); decoder 128 wide, 4 blocks, 4 heads."""
    return _build("mae_vit_tiny", img_size, patch_size, mask_ratio, kwargs)


def mae_vit_small(img_size, patch_size: int = 16, mask_ratio: float = 0.75, **kwargs: Any) -> MaskedAutoencoderViT3D:
    """Encoder 384 wide, 12 blocks, 6 heads (ViT-S); decoder 256 wide, 4 blocks, 8 heads."""
    return _build("mae_vit_small", img_size, patch_size, mask_ratio, kwargs)


def mae_vit_base(img_size, patch_size: int = 16, mask_ratio: float = 0.75, **kwargs: Any) -> MaskedAutoencoderViT3D:
    """Encoder 768 wide, 12 blocks, 12 heads (ViT-B); decoder 384 wide, 4 blocks, 12 heads (MONAI's default)."""
    return _build("mae_vit_base", img_size, patch_size, mask_ratio, kwargs)


def mae_vit_large(img_size, patch_size: int = 16, mask_ratio: float = 0.75, **kwargs: Any) -> MaskedAutoencoderViT3D:
    """Encoder 1024 wide, 24 blocks, 16 heads (ViT-L); decoder 512 wide, 8 blocks, 16 heads (MAE's)."""
    return _build("mae_vit_large", img_size, patch_size, mask_ratio, kwargs)


MODELS: dict[str, Callable[..., MaskedAutoencoderViT3D]] = {
    "mae_vit_micro": mae_vit_micro,
    "mae_vit_tiny": mae_vit_tiny,
    "mae_vit_small": mae_vit_small,
    "mae_vit_base": mae_vit_base,
    "mae_vit_large": mae_vit_large,
}


def build_mae(name: str, **kwargs: Any) -> MaskedAutoencoderViT3D:
    """Build a preset by name; keywords go to the preset (``img_size`` is required)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
