"""Tests of the 3D ViT encoder and masked autoencoder (tiny CPU configurations)."""

from __future__ import annotations

import math

import pytest
import torch

from ichor.models import (
    PRESETS,
    MAEConfig,
    MaskedAutoencoderViT3D,
    ViTConfig,
    ViTEncoder3D,
    build_mae,
    mae_flops,
    patchify,
    unpatchify,
)

IMG = (32, 32, 32)
P = 8  # 4 x 4 x 4 = 64 patches
SMALL = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=24, decoder_depth=2, decoder_num_heads=2)


def make_mae(grad_checkpointing: bool = False, **kwargs) -> MaskedAutoencoderViT3D:
    torch.manual_seed(0)
    return MaskedAutoencoderViT3D(MAEConfig(patch_size=P, **{**SMALL, **kwargs}), IMG, grad_checkpointing)


def sphere(radius: float, centre=(16.0, 16.0, 16.0), size=IMG) -> torch.Tensor:
    """(1, 1, D, H, W) CBF-like ball: 60 at the rim (grey matter), 20 inside, 0 outside."""
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) + 0.5 for n in size), indexing="ij"))
    r = ((grid - torch.tensor(centre).view(3, 1, 1, 1)) ** 2).sum(0).sqrt()
    vol = torch.where(r < radius, torch.where(r > 0.7 * radius, 60.0, 20.0), 0.0)
    return (vol / 60.0)[None, None]


def brain_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two scans with different brain sizes (so different brain patch counts)."""
    imgs = torch.cat([sphere(14.0), sphere(9.0, centre=(12.0, 12.0, 12.0))])
    return imgs, imgs != 0


def test_random_masking_keeps_exact_ratio_over_all_patches():
    model = make_mae(brain_aware=False)
    imgs = torch.rand(3, 1, *IMG)
    for ratio in (0.75, 0.6, 0.9):
        _, _, mask = model(imgs, mask_ratio=ratio)
        expected = 64 - int(64 * (1 - ratio))
        assert mask.shape == (3, 64)
        assert mask.sum(1).tolist() == [expected] * 3


def test_all_patches_mae_never_learns_unknown_regions_as_zero():
    """brain_aware=False: non-brain (or not acquired) patches enter the encoder but are never targets."""
    model = make_mae(brain_aware=False)
    imgs, brain = brain_batch()
    with torch.no_grad():
        loss, pred, mask = model(imgs, brain)
        outside = ~model.brain_patches(imgs, brain)
        assert outside.any() and mask[outside].sum() == 0 and mask.sum() > 0
        garbage = pred.clone()
        garbage[outside] = 1e3  # any prediction there: the loss does not change
        torch.testing.assert_close(model.forward_loss(imgs, garbage, mask), loss)


def test_brain_aware_masking_draws_only_among_brain_patches():
    model = make_mae()
    imgs, brain = brain_batch()
    token_mask = model.brain_patches(imgs, brain)
    counts = token_mask.sum(1)
    assert counts[0] > counts[1] > 0 and counts[0] < 64  # the batch really is ragged

    _, masking = model.random_masking(model.patchify(imgs), 0.75, token_mask=token_mask)
    for i in range(2):
        n, keep = int(counts[i]), int(n_keep := masking.len_keep[i])
        assert keep == int(n * 0.25)
        visible = masking.ids_shuffle[i, :keep]
        assert token_mask[i, visible].all()  # visible patches are brain
        masked = masking.mask[i].bool()
        assert masked.sum() == n - n_keep
        assert not masked[~token_mask[i]].any()  # non-brain patches are never "masked"
        assert token_mask[i, masked].all()


def test_non_brain_and_visible_patches_do_not_count_in_the_loss():
    model = make_mae()
    imgs, brain = brain_batch()
    with torch.no_grad():
        loss, pred, mask = model(imgs, brain_mask=brain)
        changed = pred.clone()
        changed[mask == 0] += 5.0  # visible and non-brain patches
        # Equal up to summation order: the training loss sums over the decoded masked rows only.
        torch.testing.assert_close(model.forward_loss(imgs, changed, mask), loss, rtol=1e-6, atol=0)
        changed = pred.clone()
        changed[mask == 1] += 5.0
        assert model.forward_loss(imgs, changed, mask) > loss
        # Non-brain rows of the prediction are zero: they were never decoded.
        non_brain = ~model.brain_patches(imgs, brain)
        assert pred[non_brain].abs().sum() == 0


def test_all_patches_masking_puts_the_targets_right_after_the_visible_patches():
    """brain_aware=False: the masked brain patches are one run of rows, so the loss reads no others."""
    model = make_mae(brain_aware=False)
    imgs, brain = brain_batch()
    targets = model.brain_patches(imgs, brain)
    _, masking = model.random_masking(model.patchify(imgs), 0.75, targets=targets)
    keep = 64 - int(64 * 0.75)
    ends = []
    for i in range(2):
        order = masking.ids_shuffle[i]
        assert sorted(order.tolist()) == list(range(64))
        n_targets = int(masking.mask[i].sum())
        assert targets[i, order[keep : keep + n_targets]].all()  # the masked brain patches...
        assert not targets[i, order[keep + n_targets :]].any()  # ...then the masked non-brain ones
        assert masking.mask[i, order[keep : keep + n_targets]].eq(1).all()
        assert torch.equal(masking.ids_restore[i, order], torch.arange(64))
        ends.append(keep + n_targets)
    assert masking.targets_end == max(ends) < 64  # the loss stops there
    # Visible patches are still the lowest-noise ones among all patches.
    noise = torch.rand(2, 64)
    _, again = model.random_masking(model.patchify(imgs), 0.75, noise=noise, targets=targets)
    assert torch.equal(again.ids_shuffle[:, :keep].sort(1).values, noise.argsort(1)[:, :keep].sort(1).values)


def test_brain_mask_falls_back_to_nonzero_voxels():
    model = make_mae()
    imgs, brain = brain_batch()
    noise = torch.rand(2, 64)
    with torch.no_grad():
        with_mask = model(imgs, brain_mask=brain, noise=noise)
        without = model(imgs, noise=noise)
    assert torch.equal(with_mask[2], without[2])


def test_min_brain_fraction_drops_edge_patches():
    imgs, brain = brain_batch()
    any_voxel = make_mae().brain_patches(imgs, brain).sum()
    half = make_mae(min_brain_fraction=0.5).brain_patches(imgs, brain).sum()
    assert 0 < half < any_voxel


def test_injected_noise_makes_masks_reproducible():
    model = make_mae()
    imgs, brain = brain_batch()
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(1))
    other = torch.rand(2, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first = model(imgs, brain, noise=noise)
        again = model(imgs, brain, noise=noise.clone())
        different = model(imgs, brain, noise=other)
    assert torch.equal(first[2], again[2]) and torch.equal(first[0], again[0])
    assert not torch.equal(first[2], different[2])


def test_padding_does_not_leak_between_scans_of_a_ragged_batch():
    """A scan's prediction is the same alone and next to a scan with more brain patches."""
    model = make_mae().eval()
    imgs, brain = brain_batch()
    noise = torch.rand(2, 64)
    with torch.no_grad():
        _, pred_batch, mask_batch = model(imgs, brain, noise=noise)
        _, pred_alone, mask_alone = model(imgs[1:], brain[1:], noise=noise[1:])
    assert torch.equal(mask_batch[1:], mask_alone)
    torch.testing.assert_close(pred_batch[1:], pred_alone, atol=1e-5, rtol=1e-5)


def test_patchify_round_trip_and_conv_order():
    imgs = torch.randn(2, 3, 16, 24, 32)
    patches = patchify(imgs, 8)
    assert patches.shape == (2, 2 * 3 * 4, 3 * 8**3)
    assert torch.equal(unpatchify(patches, 8, (2, 3, 4), in_chans=3), imgs)
    # The documented voxel order makes a linear embedding equal to a Conv3d(stride=p).
    conv = torch.nn.Conv3d(3, 5, kernel_size=8, stride=8)
    as_linear = patches @ conv.weight.reshape(5, -1).T + conv.bias
    torch.testing.assert_close(as_linear, conv(imgs).flatten(2).transpose(1, 2), atol=1e-4, rtol=1e-4)


def test_position_embeddings_are_fixed_distinct_and_regenerated():
    encoder = ViTEncoder3D(ViTConfig(patch_size=P, embed_dim=32, depth=1, num_heads=2), IMG)
    pos = encoder.pos_embed
    assert pos.shape == (1, 64, 32)
    assert not pos.requires_grad
    assert all(p is not pos for p in encoder.parameters())
    assert "pos_embed" not in encoder.state_dict()  # so weights load at any input shape
    assert torch.cdist(pos[0], pos[0]).add(torch.eye(64)).min() > 1e-3  # one vector per position

    weights = encoder.state_dict()
    encoder.set_img_size((48, 32, 16))
    assert encoder.pos_embed.shape == (1, 6 * 4 * 2, 32)
    other = ViTEncoder3D(encoder.config, (48, 32, 16))
    other.load_state_dict(weights)  # strict: no missing or unexpected keys
    tokens, _ = other.forward_features(torch.rand(1, 1, 48, 32, 16))
    assert tokens.shape == (1, 48, 32)


@pytest.mark.parametrize("brain_aware", [True, False])
def test_forward_loss_on_returned_prediction_equals_training_loss(brain_aware):
    model = make_mae(brain_aware=brain_aware)
    imgs, brain = brain_batch()
    with torch.no_grad():
        loss, pred, mask = model(imgs, brain)
        torch.testing.assert_close(model.forward_loss(imgs, pred, mask), loss)


def test_norm_pix_loss_differs_from_plain():
    imgs, brain = brain_batch()
    noise = torch.rand(2, 64)
    with torch.no_grad():
        normed = make_mae(norm_pix_loss=True)(imgs, brain, noise=noise)[0]
        plain = make_mae(norm_pix_loss=False)(imgs, brain, noise=noise)[0]
    assert not torch.isclose(normed, plain)


@pytest.mark.parametrize("shape", [(30, 32, 32), (32, 32, 36)])
def test_clear_error_when_shape_is_not_a_multiple_of_the_patch(shape):
    with pytest.raises(ValueError, match=r"not a multiple of the patch size 8.*datamodule's `shape`"):
        make_mae()(torch.rand(1, 1, *shape))
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        MaskedAutoencoderViT3D(MAEConfig(patch_size=P, **SMALL), shape)


def test_clear_error_when_input_differs_from_img_size():
    with pytest.raises(ValueError, match=r"set_img_size\(\(40, 32, 32\)\)"):
        make_mae()(torch.rand(1, 1, 40, 32, 32))


def test_clear_error_for_a_scan_without_brain():
    imgs, brain = brain_batch()
    brain[1] = False
    with pytest.raises(ValueError, match=r"batch item\(s\) \[1\] have no brain patch"):
        make_mae()(imgs, brain)


def test_bf16_autocast_gives_finite_fp32_loss():
    model = make_mae()
    imgs, brain = brain_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, pred, _ = model(imgs, brain)
    assert pred.dtype == torch.bfloat16  # the network really ran in bf16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("brain_aware", [True, False])
@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_every_parameter_gets_a_gradient(brain_aware, grad_checkpointing):
    """DDP without find_unused_parameters needs every parameter in the graph."""
    model = make_mae(brain_aware=brain_aware, grad_checkpointing=grad_checkpointing)
    imgs, brain = brain_batch()
    model(imgs, brain)[0].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_forward_features_encodes_brain_patches_only():
    model = make_mae().eval()
    encoder = model.encoder
    imgs, brain = brain_batch()
    with torch.no_grad():
        tokens, token_mask = encoder.forward_features(imgs, brain)
        assert tokens.shape == (2, 64, 32)
        assert torch.equal(token_mask, model.brain_patches(imgs, brain))
        assert tokens[~token_mask].abs().sum() == 0
        # Content of non-brain patches cannot reach brain tokens.
        noisy = imgs + torch.rand_like(imgs) * (~token_mask).float().repeat_interleave(8**3, 1).reshape(
            2, 4, 4, 4, 8, 8, 8
        ).permute(0, 1, 4, 2, 5, 3, 6).reshape(2, 1, *IMG)
        assert not torch.equal(noisy, imgs)
        torch.testing.assert_close(encoder.forward_features(noisy, brain)[0], tokens)
        # With every patch counted as brain, brain-only encoding equals full encoding.
        full, everywhere = encoder.forward_features(imgs)
        assert everywhere.all()
        torch.testing.assert_close(encoder.forward_features(imgs, torch.ones_like(brain))[0], full)


def test_presets_build_with_published_widths():
    documented = {  # encoder width/depth/heads, decoder width/depth/heads: exported encoders name these
        "mae_vit_micro": (96, 4, 3, 64, 2, 2),
        "mae_vit_tiny": (192, 12, 3, 128, 4, 4),
        "mae_vit_small": (384, 12, 6, 256, 4, 8),
        "mae_vit_base": (768, 12, 12, 384, 4, 12),
        "mae_vit_large": (1024, 24, 16, 512, 8, 16),
    }
    widths = ("embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth", "decoder_num_heads")
    assert {name: tuple(getattr(preset, k) for k in widths) for name, preset in PRESETS.items()} == documented
    for name, (w, d, h, dw, _dd, dh) in documented.items():
        if name in ("mae_vit_base", "mae_vit_large"):
            continue  # same code path; building them costs seconds
        model = build_mae(name, img_size=IMG, patch_size=P, mask_ratio=0.6, decoder_depth=1)
        enc = model.encoder
        assert (enc.embed_dim, enc.depth, enc.num_heads) == (w, d, h)
        assert model.decoder.embed.out_features == dw and model.decoder.blocks[0].attn.num_heads == dh
        assert len(model.decoder.blocks) == 1  # keywords override
        assert model.mask_ratio == 0.6 and enc.patch_size == P
    with pytest.raises(ValueError, match="unknown model 'mae_vit_huge'"):
        build_mae("mae_vit_huge", img_size=IMG)


def test_flops_count_matches_hand_count_and_brain_tokens_save_compute():
    model = make_mae(depth=1, decoder_depth=1)
    full = mae_flops(model)
    assert (full["grid_tokens"], full["encoder_tokens"], full["decoder_tokens"]) == (64, 16, 64)
    block = lambda n, c: 2 * n * 12 * c * c + 4 * n * n * c  # noqa: E731
    hand = 2 * 16 * 512 * 32 + block(16, 32) + 2 * 16 * 32 * 24 + block(64, 24) + 2 * 64 * 24 * 512
    assert full["forward_flops"] == hand and full["train_step_flops"] == 3 * hand
    assert mae_flops(model, brain_patches=32)["train_step_flops"] < full["train_step_flops"] / 1.5


def test_short_overfit_on_one_volume_drives_loss_down():
    torch.manual_seed(0)
    model = make_mae(embed_dim=48, decoder_embed_dim=48, norm_pix_loss=False)
    imgs = sphere(13.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        loss = model(imgs)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1])
    assert sum(losses[-10:]) / 10 < 0.25 * sum(losses[:3]) / 3  # about 0.05 vs 0.34


def test_encoder_weights_export_and_reload_without_key_mismatch():
    model = make_mae().eval()
    imgs, brain = brain_batch()
    reloaded = ViTEncoder3D(model.encoder.config, model.encoder.img_size).eval()
    reloaded.load_state_dict(model.encoder.state_dict())  # strict
    with torch.no_grad():
        torch.testing.assert_close(reloaded(imgs, brain)[0], model.encoder(imgs, brain)[0])
