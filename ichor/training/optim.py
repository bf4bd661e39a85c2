"""The optimiser recipe of every ICHOR module: AdamW, decay groups, batch-scaled lr, per-step warm-up + cosine.

Pre-training methods and downstream tasks differ only in their defaults and parameter groups
(downstream fine-tuning adds layer-wise lr decay), so :class:`AdamW` and :func:`configure_adamw`
are written once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


@dataclass
class AdamW:
    """AdamW with linear warm-up then half-cosine decay, stepped every optimiser step.

    Args:
        lr: peak learning rate. With ``lr_batch`` it is the rate for a batch of ``lr_batch``
            scans, and the run uses ``lr * effective_batch / lr_batch`` (MAE's linear scaling;
            effective batch = per-device batch x devices x nodes x accumulation); with
            ``lr_batch`` null it is used as given.
        lr_batch: reference batch of the linear scaling rule (256 in MAE), or null.
        weight_decay: decay of weights; never of norms and biases.
        betas: AdamW betas; beta2 = 0.95 is the MAE pre-training recipe.
        warmup_epochs: linear warm-up length, in epochs (converted to steps).
        min_lr_factor: final lr as a fraction of the peak.
    """

    lr: float = 1.5e-4
    lr_batch: int | None = 256
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 5.0
    min_lr_factor: float = 0.0

    def peak_lr(self, effective_batch: int) -> float:
        """The absolute peak lr for ``effective_batch`` scans per optimiser step."""
        return self.lr if self.lr_batch is None else self.lr * effective_batch / self.lr_batch

    def as_dict(self) -> dict[str, Any]:
        """Plain values, as checkpoints keep hyper-parameters."""
        return {**asdict(self), "betas": list(self.betas)}


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weights decay, norms and biases (1-D parameters) do not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> float:
    """lr factor at ``step``: linear warm-up from 0, then half-cosine down to ``min_factor``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def effective_batch(module: LightningModule) -> int:
    """Scans per optimiser step: the datamodule's batch x accumulation x devices."""
    trainer = module.trainer
    batch = getattr(getattr(trainer, "datamodule", None), "hparams", {}).get("batch_size", 1)
    return batch * trainer.accumulate_grad_batches * trainer.world_size


def configure_adamw(module: LightningModule, recipe: AdamW, groups: list[dict] | None = None) -> dict:
    """``configure_optimizers``'s answer for ``recipe``: AdamW over ``groups`` (default: weight-decay
    groups of ``module``) and the per-step warm-up + cosine schedule over the whole run.

    A group with an ``lr_scale`` (layer-wise decay) trains at that fraction of the peak lr; the
    schedule scales every group alike.
    """
    groups = param_groups_weight_decay(module, recipe.weight_decay) if groups is None else groups
    lr = recipe.peak_lr(effective_batch(module))
    for group in groups:
        if "lr_scale" in group:
            group["lr"] = lr * group["lr_scale"]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(recipe.betas))
    trainer = module.trainer
    total = max(1, int(trainer.estimated_stepping_batches))
    steps_per_epoch = max(1, total // max(1, trainer.max_epochs or 1))
    warmup = min(total - 1, int(recipe.warmup_epochs * steps_per_epoch)) if total > 1 else 0
    schedule = LambdaLR(optimizer, lambda step: warmup_cosine(step, max(warmup, 1), total, recipe.min_lr_factor))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
