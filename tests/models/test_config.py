"""The model config objects: one source for the networks, the presets, ``Backbone`` and ``encoder.json``."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, asdict

import pytest
import torch

from ichor.models import PRESETS, Backbone, MaskedAutoencoderViT3D, ViTConfig, ViTEncoder3D, get_preset
from ichor.models.weights import encoder_metadata, load_encoder, write_export

# Parameter counts at patch 16 (MAE, and its encoder), measured on the constructors before they
# took a config (commit 43f4273): a preset's config must build exactly the network it built then.
PARAMETERS = {
    "mae_vit_micro": (1_213_472, 840_864),
    "mae_vit_tiny": (7_471_936, 6_125_376),
    "mae_vit_small": (27_178_624, 22_867_584),
    "mae_vit_base": (97_173_760, 88_202_496),
    "mae_vit_large": (334_353_408, 306_506_752),
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_builds_the_network_it_built_before(name):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        mae = MaskedAutoencoderViT3D(PRESETS[name], (32, 32, 32))
        encoder = ViTEncoder3D(PRESETS[name], (32, 32, 32))
    assert (count(mae), count(mae.encoder)) == PARAMETERS[name]
    assert count(encoder) == PARAMETERS[name][1] and encoder.config == PRESETS[name].encoder()


def test_the_config_round_trips_through_encoder_json(tmp_path):
    config = ViTConfig(
        patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0, min_brain_fraction=0.25,
        pos_embed="learned", cls_token=True, norm_eps=1e-5,
    )  # fmt: skip
    torch.manual_seed(0)
    encoder = ViTEncoder3D(config, (16, 24, 16))
    metadata = encoder_metadata(encoder.config, encoder.img_size, {"shape": [16, 24, 16]}, {"method": "test"})
    write_export(encoder.state_dict(), metadata, tmp_path)

    written = json.loads((tmp_path / "encoder.json").read_text())
    assert written["architecture"] == asdict(config) and written["img_size"] == [16, 24, 16]
    loaded, _ = load_encoder(tmp_path)
    assert loaded.config == config and loaded.img_size == (16, 24, 16)
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_configs_are_frozen_and_the_encoder_keeps_only_its_part():
    config = get_preset("mae_vit_micro", patch_size=8, decoder_depth=1)
    with pytest.raises(FrozenInstanceError):
        config.depth = 2  # type: ignore[misc]
    assert type(config.encoder()) is ViTConfig
    assert set(asdict(config.encoder())) == set(asdict(ViTConfig()))
    assert config.encoder() == ViTConfig(patch_size=8, embed_dim=96, depth=4, num_heads=3)


def test_backbone_resolves_to_the_preset_with_its_patch_and_overrides():
    backbone = Backbone("mae_vit_small", patch_size=8, overrides={"depth": 2, "decoder_depth": 1})
    assert backbone.config() == get_preset("mae_vit_small", patch_size=8, depth=2, decoder_depth=1)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [({"dept": 2}, "'dept'"), ({"mask_ratio": 0.6}, "'mask_ratio'"), ({"patch_size": 8}, "'patch_size'")],
)
def test_unknown_override_keys_are_refused_by_name(overrides, named):
    """A typo, an objective setting (a method argument) and the backbone's own key all fail at config time."""
    with pytest.raises(ValueError, match=rf"model.init_args.backbone.overrides: unknown key\(s\) {named}.*known: "):
        Backbone("mae_vit_micro", overrides=overrides)


def test_unknown_preset_keys_and_values_are_refused():
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'rotary'"):
        get_preset("mae_vit_micro", rotary=True)
    with pytest.raises(ValueError, match="unknown model 'mae_vit_huge'"):
        Backbone("mae_vit_huge")
    with pytest.raises(ValueError, match="pos_embed must be one of sincos, learned, got 'fourier'"):
        ViTConfig(pos_embed="fourier")
