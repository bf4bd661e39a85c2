"""Named model sizes in one table, and the backbone spec every pre-training method shares.

Widths follow the ViT family; decoders follow the 3D MAE literature (base: MONAI's default
384/4/12, large: MAE's 512/8/16). ``mae_vit_micro`` exists for CPU demos and tests. SimCLR and
Models Genesis use the same names, so that "SimCLR with mae_vit_base" has exactly the encoder of
"MAE with mae_vit_base".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ichor.models.mae import MaskedAutoencoderViT3D
from ichor.models.vit import ViTEncoder3D


@dataclass(frozen=True)
class Preset:
    """Encoder and decoder widths of one named size."""

    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int

    def encoder_args(self) -> dict[str, int]:
        return {"embed_dim": self.embed_dim, "depth": self.depth, "num_heads": self.num_heads}

    def decoder_args(self) -> dict[str, int]:
        return {
            "decoder_embed_dim": self.decoder_embed_dim,
            "decoder_depth": self.decoder_depth,
            "decoder_num_heads": self.decoder_num_heads,
        }


PRESETS: dict[str, Preset] = {
    "mae_vit_micro": Preset(96, 4, 3, 64, 2, 2),
    "mae_vit_tiny": Preset(192, 12, 3, 128, 4, 4),  # ViT-Ti
    "mae_vit_small": Preset(384, 12, 6, 256, 4, 8),  # ViT-S
    "mae_vit_base": Preset(768, 12, 12, 384, 4, 12),  # ViT-B
    "mae_vit_large": Preset(1024, 24, 16, 512, 8, 16),  # ViT-L
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def build_encoder(name: str, img_size: tuple[int, int, int], patch_size: int = 16, **overrides: Any) -> ViTEncoder3D:
    """A :class:`ViTEncoder3D` at a preset's encoder widths; ``overrides`` (e.g. ``depth``) win."""
    args = {**get_preset(name).encoder_args(), **overrides}
    return ViTEncoder3D(img_size=tuple(img_size), patch_size=patch_size, **args)


def build_mae(
    name: str, img_size: tuple[int, int, int], patch_size: int = 16, **overrides: Any
) -> MaskedAutoencoderViT3D:
    """A :class:`MaskedAutoencoderViT3D` at a preset's widths; ``overrides`` (e.g. ``decoder_depth``, ``mask_ratio``) win."""
    preset = get_preset(name)
    args = {**preset.encoder_args(), **preset.decoder_args(), **overrides}
    return MaskedAutoencoderViT3D(img_size=tuple(img_size), patch_size=patch_size, **args)


@dataclass
class Backbone:
    """The 3D ViT that a pre-training method trains and downstream tasks keep.

    Args:
        preset: a name from :data:`PRESETS` (``mae_vit_micro`` ... ``mae_vit_large``).
        patch_size: cubic patch edge in voxels (16 by default, 8 for small grids).
        img_size: input shape; ``None`` takes the datamodule's ``shape`` at setup and records it.
        overrides: further network keywords that win over the preset's (e.g. ``depth``).
        grad_checkpointing: recompute block activations in backward to save memory.
        compile: ``torch.compile`` the networks in place (keeps checkpoint keys unchanged).
    """

    preset: str = "mae_vit_tiny"
    patch_size: int = 16
    img_size: tuple[int, int, int] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    grad_checkpointing: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        get_preset(self.preset)  # an unknown name fails when the config is read, not after caching the data
        if self.img_size is not None:
            self.img_size = tuple(int(n) for n in self.img_size)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, as checkpoints keep hyper-parameters."""
        values = asdict(self)
        values["img_size"] = None if self.img_size is None else list(self.img_size)
        return values
