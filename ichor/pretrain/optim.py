"""Optimiser pieces of the MAE recipe: decay groups, batch-scaled lr, cosine with warm-up."""

from __future__ import annotations

import math

from torch import nn

# MAE's rule: lr = base_lr * effective_batch / 256 (Goyal et al. linear scaling).
LR_REFERENCE_BATCH = 256


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


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """The absolute lr for ``effective_batch`` = per-device batch x devices x nodes x accumulation."""
    return base_lr * effective_batch / LR_REFERENCE_BATCH


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> float:
    """lr factor at ``step``: linear warm-up from 0, then half-cosine down to ``min_factor``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
