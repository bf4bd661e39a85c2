"""The MAE's training loss pinned against a plain reference: full-grid patchify, masked mean.

The model computes targets and loss on the decoded masked brain rows only (for speed); these
tests recompute the loss the slow, obvious way, with the mask rebuilt from the noise, so that a
restructuring of the forward cannot change what is minimised without failing here.
"""

from __future__ import annotations

import pytest
import torch

from ichor.models import MAEConfig, MaskedAutoencoderViT3D, patchify

IMG = (32, 40, 32)
P = 8  # 4 x 5 x 4 = 80 patches
RATIO = 0.75
SMALL = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=24, decoder_depth=2, decoder_num_heads=2)


def ragged_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three CBF-like scans (noisy values in balls of different sizes, 0 outside): different brain patch counts."""
    gen = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*(torch.arange(n) + 0.5 for n in IMG), indexing="ij")
    images, brains = [], []
    for radius, centre in ((15.0, (16, 20, 16)), (11.0, (14, 18, 15)), (8.0, (18, 22, 17))):
        brain = sum((a - c) ** 2 for a, c in zip(axes, centre)) < radius**2
        values = 0.4 + 0.2 * torch.rand(IMG, generator=gen)
        images.append(torch.where(brain, values, 0.0))
        brains.append(brain)
    return torch.stack(images)[:, None], torch.stack(brains)[:, None]


def reference_mask(noise: torch.Tensor, brain: torch.Tensor, brain_aware: bool) -> torch.Tensor:
    """(B, L) 1 = masked brain patch: per scan, the eligible patches with the lowest noise stay visible."""
    mask = torch.zeros_like(noise)
    for i in range(noise.shape[0]):
        eligible = brain[i] if brain_aware else torch.ones_like(brain[i])
        order = [j for j in noise[i].argsort().tolist() if eligible[j]]
        visible = int(len(order) * (1 - RATIO))
        mask[i, order[visible:]] = 1.0
    return mask * brain


def reference_loss(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Mean over masked brain patches of each patch's mean squared error, every patch of the grid computed."""
    target = patchify(imgs.double(), P)
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = ((pred.double() - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


@pytest.mark.parametrize("norm_pix_loss", [True, False])
@pytest.mark.parametrize("brain_aware", [True, False])
def test_training_loss_is_the_masked_mean_over_the_full_grid(brain_aware, norm_pix_loss):
    torch.manual_seed(0)
    config = MAEConfig(patch_size=P, mask_ratio=RATIO, brain_aware=brain_aware, norm_pix_loss=norm_pix_loss, **SMALL)
    model = MaskedAutoencoderViT3D(config, IMG)
    imgs, brain_mask = ragged_batch()
    noise = torch.rand(3, 80, generator=torch.Generator().manual_seed(1))
    brain = model.brain_patches(imgs, brain_mask)
    assert len(set(brain.sum(1).tolist())) == 3  # ragged: padding rows exist in the decoder
    with torch.no_grad():
        loss, pred, mask = model(imgs, brain_mask, noise=noise)
    expected_mask = reference_mask(noise, brain, brain_aware)
    assert torch.equal(mask, expected_mask)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(
        loss.double(), reference_loss(imgs, pred, expected_mask, norm_pix_loss), rtol=1e-6, atol=0
    )
    # The same value through the public full-grid loss (the validation baseline's path).
    torch.testing.assert_close(model.forward_loss(imgs, pred, mask), loss, rtol=1e-6, atol=0)


def test_only_masked_brain_predictions_reach_the_loss_gradient():
    """Visible, padding and non-brain rows get no gradient: the loss is over masked brain patches alone."""
    torch.manual_seed(0)
    model = MaskedAutoencoderViT3D(MAEConfig(patch_size=P, mask_ratio=RATIO, **SMALL), IMG)
    imgs, brain_mask = ragged_batch()
    decoded = []
    model.decoder.blocks[-1].register_forward_hook(lambda module, args, out: decoded.append(out) or out.retain_grad())
    predicted = []  # rows through the prediction layer, and whether with a gradient
    model.decoder.pred.register_forward_hook(
        lambda module, args, out: predicted.append((out.shape[1], out.requires_grad))
    )
    loss, _, mask = model(imgs, brain_mask)
    loss.backward()
    rows_with_gradient = (decoded[0].grad.abs().sum(-1) > 0).sum(1)
    assert rows_with_gradient.tolist() == mask.sum(1).long().tolist()
    # The widest layer backpropagates through the loss rows only: the visible rows before them go without.
    with_gradient = sum(rows for rows, grad in predicted if grad)
    assert int(mask.sum(1).max()) <= with_gradient < sum(rows for rows, _ in predicted) == decoded[0].shape[1]


def reference_forward(model: MaskedAutoencoderViT3D, imgs, brain_mask, noise) -> torch.Tensor:
    """The training loss the straightforward way: one scan at a time, every sequence in grid order.

    Per scan: patchify the whole image, keep the eligible patches with the lowest noise, encode
    them, put the mask token at every other eligible grid position, decode the eligible
    positions in grid order, predict every one and average the error over masked brain patches.
    No padding, no shuffled rows, no row selection: what the batched forward must equal.
    """
    brain = model.brain_patches(imgs, brain_mask)
    mask = reference_mask(noise, brain, model.brain_aware)
    enc, dec = model.encoder, model.decoder
    errors = []
    for i in range(imgs.shape[0]):
        patches = patchify(imgs[i : i + 1], P)[0]
        eligible = brain[i] if model.brain_aware else torch.ones_like(brain[i])
        order = [j for j in noise[i].argsort().tolist() if eligible[j]]
        visible = torch.tensor(order[: int(len(order) * (1 - RATIO))])
        latent = enc.forward_blocks((enc.patch_embed(patches[visible]) + enc.pos_embed[0, visible])[None])
        positions = eligible.nonzero()[:, 0]  # grid order
        tokens = model.mask_token[0].expand(len(positions), -1).clone()
        tokens[torch.searchsorted(positions, visible)] = dec.embed(latent[0])
        pred = dec(tokens[None] + dec.pos_embed[:, positions])[0]
        target = patches[positions]
        if model.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        errors.append(((pred - target) ** 2).mean(-1)[mask[i, positions].bool()])
    return torch.cat(errors).mean()


@pytest.mark.parametrize("norm_pix_loss", [True, False])
@pytest.mark.parametrize("brain_aware", [True, False])
def test_loss_and_gradients_equal_the_straightforward_per_scan_mae(brain_aware, norm_pix_loss):
    """Loss and every parameter's gradient of the batched, row-selecting forward equal the reference's."""
    torch.manual_seed(0)
    config = MAEConfig(patch_size=P, mask_ratio=RATIO, brain_aware=brain_aware, norm_pix_loss=norm_pix_loss, **SMALL)
    model = MaskedAutoencoderViT3D(config, IMG)
    imgs, brain_mask = ragged_batch()
    noise = torch.rand(3, 80, generator=torch.Generator().manual_seed(1))
    loss = model(imgs, brain_mask, noise=noise)[0]
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = reference_forward(model, imgs, brain_mask, noise)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
    for (name, _), grad, reference in zip(model.named_parameters(), grads, expected_grads):
        torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
