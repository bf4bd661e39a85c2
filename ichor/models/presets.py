"""Named model sizes in one table, and the backbone spec every pre-training method shares.

Widths follow the ViT family; decoders follow the 3D MAE literature (base: MONAI's default
384/4/12, large: MAE's 512/8/16). ``mae_vit_micro`` exists for CPU demos and tests. SimCLR and
Models Genesis use the same names, so that "SimCLR with mae_vit_base" has exactly the encoder of
"MAE with mae_vit_base".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ichor.models.config import OBJECTIVE, MAEConfig, updated
from ichor.models.mae import MaskedAutoencoderViT3D
from ichor.models.vit import ViTEncoder3D

PRESETS: dict[str, MAEConfig] = {
    name: MAEConfig(embed_dim=w, depth=d, num_heads=h, decoder_embed_dim=dw, decoder_depth=dd, decoder_num_heads=dh)
    for name, (w, d, h, dw, dd, dh) in {
        "mae_vit_micro": (96, 4, 3, 64, 2, 2),
        "mae_vit_tiny": (192, 12, 3, 128, 4, 4),  # ViT-Ti
        "mae_vit_small": (384, 12, 6, 256, 4, 8),  # ViT-S
        "mae_vit_base": (768, 12, 12, 384, 4, 12),  # ViT-B
        "mae_vit_large": (1024, 24, 16, 512, 8, 16),  # ViT-L
    }.items()
}
#: What ``Backbone.overrides`` may change: the network's fields, less its own ``patch_size`` and the MAE objective.
NETWORK_KEYS = tuple(f.name for f in fields(MAEConfig) if f.name not in ("patch_size", *OBJECTIVE))


def get_preset(name: str, **changes: Any) -> MAEConfig:
    """The config of a named size, with ``changes`` (any ``MAEConfig`` field, e.g. ``patch_size=8``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(PRESETS)}")
    return updated(PRESETS[name], changes, f"model {name!r}")


def build_encoder(
    name: str, img_size: tuple[int, int, int], patch_size: int = 16, grad_checkpointing: bool = False, **changes: Any
) -> ViTEncoder3D:
    """A :class:`ViTEncoder3D` of a preset; ``changes`` (e.g. ``depth``) win."""
    return ViTEncoder3D(get_preset(name, patch_size=patch_size, **changes), img_size, grad_checkpointing)


def build_mae(
    name: str, img_size: tuple[int, int, int], patch_size: int = 16, grad_checkpointing: bool = False, **changes: Any
) -> MaskedAutoencoderViT3D:
    """A :class:`MaskedAutoencoderViT3D` of a preset; ``changes`` (e.g. ``decoder_depth``, ``mask_ratio``) win."""
    return MaskedAutoencoderViT3D(get_preset(name, patch_size=patch_size, **changes), img_size, grad_checkpointing)


@dataclass
class Backbone:
    """The 3D ViT that a pre-training method trains and downstream tasks keep.

    Args:
        preset: a name from :data:`PRESETS` (``mae_vit_micro`` ... ``mae_vit_large``).
        patch_size: cubic patch edge in voxels (16 by default, 8 for small grids).
        img_size: input shape; ``None`` takes the datamodule's ``shape`` at setup and records it.
        overrides: network fields (of :class:`ichor.models.MAEConfig`, e.g. ``depth``, ``decoder_depth``)
            that win over the preset's; an unknown key is refused by name.
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
        self.config()  # an unknown name or key fails when the config is read, not after caching the data
        if self.img_size is not None:
            self.img_size = tuple(int(n) for n in self.img_size)

    def config(self) -> MAEConfig:
        """The network: the preset at ``patch_size``, with ``overrides``."""
        preset = get_preset(self.preset, patch_size=self.patch_size)
        return updated(preset, self.overrides, "model.init_args.backbone.overrides", NETWORK_KEYS)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, as checkpoints keep hyper-parameters."""
        values = asdict(self)
        values["img_size"] = None if self.img_size is None else list(self.img_size)
        return values
