"""The optimiser recipe: decay groups, lr scaling, warm-up + cosine."""

import math

import pytest
import torch

from ichor.models import build_mae
from ichor.training.optim import AdamW, param_groups_weight_decay, warmup_cosine


def test_norms_and_biases_do_not_decay():
    model = build_mae("mae_vit_micro", img_size=(16, 16, 16), patch_size=8)
    decay, no_decay = param_groups_weight_decay(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim > 1 for p in decay["params"])
    assert any(names[id(p)].endswith("norm1.weight") for p in no_decay["params"])
    assert any(names[id(p)].endswith("qkv.bias") for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_lr_scales_linearly_with_effective_batch():
    recipe = AdamW(lr=1.5e-4, lr_batch=256)
    assert recipe.peak_lr(256) == pytest.approx(1.5e-4)
    assert recipe.peak_lr(128) == pytest.approx(0.75e-4)
    assert recipe.peak_lr(1024) == pytest.approx(6e-4)
    assert AdamW(lr=1e-3, lr_batch=None).peak_lr(1024) == 1e-3  # a task's lr is used as given


def test_warmup_then_cosine_to_floor():
    warmup, total = 10, 110
    factors = [warmup_cosine(s, warmup, total, min_factor=0.1) for s in range(total + 1)]
    assert factors[0] == pytest.approx(0.1)  # first warm-up step is 1/warmup of the peak
    assert factors[warmup - 1] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:warmup], factors[1:warmup]))  # rising
    after = factors[warmup:]
    assert all(a >= b for a, b in zip(after, after[1:]))  # then falling
    assert factors[warmup + 50] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factors[total] == pytest.approx(0.1)


def test_scheduler_lambda_drives_adamw():
    param = torch.nn.Parameter(torch.zeros(2, 2))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, 2, 6))
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:2] == pytest.approx([0.5, 1.0]) and lrs[-1] < lrs[2]
