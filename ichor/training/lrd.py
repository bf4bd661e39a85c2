"""Layer-wise learning-rate decay for fine-tuning a pre-trained ViT (the MAE/BEiT recipe).

Layer 0 is the patch embedding (with a learned position table and cls token, as imported
encoders have; neither gets weight decay, as in MAE), layer i the i-th Transformer block, and layer depth + 1
everything after the blocks (final norm, feature norm, head). Layer i trains at
``lr * decay ** (depth + 1 - i)``: the head at the full rate, early blocks, whose generic
features pre-training got right, barely moved.
"""

from __future__ import annotations

from torch import nn

ENCODER = "encoder."
EMBEDDING_TABLES = (ENCODER + "pos_embed", ENCODER + "cls_token")


def layer_id(name: str, depth: int) -> int:
    """The layer of parameter ``name`` of a module whose ViT encoder is its ``encoder`` attribute."""
    if name.startswith(ENCODER + "patch_embed.") or name in EMBEDDING_TABLES:
        return 0
    if name.startswith(ENCODER + "blocks."):
        return int(name[len(ENCODER + "blocks.") :].split(".")[0]) + 1
    return depth + 1


def param_groups_lrd(
    model: nn.Module, lr: float, weight_decay: float, depth: int, layer_decay: float = 0.75
) -> list[dict]:
    """AdamW groups, one per (layer, decays or not), each with its ``lr`` and ``lr_scale``.

    Norms and biases (1-D parameters) get no weight decay, as in
    :func:`ichor.training.optim.param_groups_weight_decay`. Frozen parameters are left out.
    """
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer, decays = layer_id(name, depth), param.ndim > 1 and name not in EMBEDDING_TABLES
        scale = layer_decay ** (depth + 1 - layer)
        group = groups.setdefault(
            (layer, decays),
            {
                "params": [],
                "names": [],
                "layer_id": layer,
                "lr_scale": scale,
                "lr": lr * scale,
                "weight_decay": weight_decay if decays else 0.0,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]
