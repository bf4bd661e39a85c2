"""LoRA adapters on the encoder's attention: the paper's parameter count, exact merging, the adapters file."""

import copy

import pytest
import torch

from ichor.models import ViTEncoder3D, build_encoder
from ichor.models.lora import (
    ADAPTERS_FILE,
    ADAPTERS_RECORD,
    LoRA,
    LoRALinear,
    adapter_state,
    add_lora,
    load_adapters,
    merge_lora,
    save_adapters,
)

SHAPE = (16, 24, 16)


def micro_encoder(seed: int = 0) -> ViTEncoder3D:
    torch.manual_seed(seed)
    return build_encoder("mae_vit_micro", SHAPE, patch_size=8).eval()


def trained_like(encoder: ViTEncoder3D) -> ViTEncoder3D:
    """Give every adapter a non-zero B, as training would (B starts at zero: the adapters start as no-ops)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, value in encoder.named_parameters():
            if ".lora_B." in name:
                value.normal_(std=0.2)
    return encoder


def features(encoder: ViTEncoder3D, seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 1, *SHAPE, generator=generator)
    with torch.no_grad():
        return encoder.forward_features(images, images > 0.3)[0]


def test_vit_b_at_rank_8_trains_the_papers_589824_adapter_weights():
    """12 blocks x (query, key, value, output) x 8 x (768 + 768): the paper's count, with ICHOR's fused qkv."""
    encoder = build_encoder("mae_vit_base", (24, 24, 24), patch_size=12)
    base_keys = set(encoder.state_dict())
    add_lora(encoder, LoRA(rank=8, alpha=16))
    trainable = {name: p.numel() for name, p in encoder.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == 589_824
    assert all(".lora_" in name for name in trainable)  # the base is frozen
    assert base_keys == {k for k in encoder.state_dict() if ".lora_" not in k}  # base weights keep their keys
    assert sum(trainable.values()) / sum(p.numel() for p in encoder.parameters()) == pytest.approx(0.0068, abs=5e-4)


def test_adapters_start_as_the_base_and_merge_into_the_same_function():
    encoder = micro_encoder()
    base = features(encoder)
    add_lora(encoder, LoRA(rank=4, alpha=8))
    torch.testing.assert_close(features(encoder), base, rtol=0, atol=0)  # B = 0: the frozen encoder exactly
    adapted = features(trained_like(encoder))
    assert (adapted - base).abs().max() > 1e-2
    merged = merge_lora(copy.deepcopy(encoder))
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(micro_encoder().state_dict())  # a plain encoder again
    assert (features(merged) - adapted).abs().max() <= 1e-5


def test_targets_adapt_only_their_slice_of_the_fused_qkv():
    encoder = trained_like(add_lora(micro_encoder(), LoRA(targets=["value"])))
    attn = encoder.blocks[0].attn
    assert isinstance(attn.qkv, LoRALinear) and not isinstance(attn.proj, LoRALinear)
    width = encoder.embed_dim
    x = torch.randn(3, 5, width)
    with torch.no_grad():
        change = attn.qkv(x) - torch.nn.functional.linear(x, attn.qkv.weight, attn.qkv.bias)
    assert change[..., : 2 * width].abs().max() == 0  # query and key untouched
    assert change[..., 2 * width :].abs().max() > 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="targets must be distinct names among query, key, value, output"):
        LoRA(targets=["qkv"])
    with pytest.raises(ValueError, match="rank must be at least 1"):
        LoRA(rank=0)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(add_lora(micro_encoder(), LoRA()), LoRA())


def test_adapters_file_round_trips_onto_its_base_only(tmp_path):
    settings = LoRA(rank=4, alpha=8, targets=["query", "key", "value", "output"])
    adapted = trained_like(add_lora(micro_encoder(), settings))
    out = save_adapters(adapted, settings, tmp_path / "adapters", {"source": "test"})
    assert (out / ADAPTERS_FILE).stat().st_size < 100_000 and (out / ADAPTERS_RECORD).is_file()

    restored = micro_encoder()
    assert load_adapters(restored, out) == settings
    for key, value in adapter_state(adapted).items():
        assert torch.equal(restored.state_dict()[key], value), key
    torch.testing.assert_close(features(restored.eval()), features(adapted), rtol=0, atol=0)
    with pytest.raises(ValueError, match="adapters belong to base encoder test"):
        load_adapters(micro_encoder(seed=5), out)  # another base: the adapters would mean nothing there
