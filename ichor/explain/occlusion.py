"""Occlusion over patch tokens: how much a task's score changes when one brain patch is left out.

MAE pre-training drops 75 % of the tokens, so a scan with one token left out is an input the encoder knows,
and no fill value (which could itself look like "no flow") has to be invented (docs/tutorials/explain.md).
"""

from __future__ import annotations

import torch

from ichor.downstream.task import DownstreamTask
from ichor.evaluation.pooling import pool_tokens
from ichor.models.patching import brain_patches


def class_score(outputs: torch.Tensor, class_index: int | None) -> torch.Tensor:
    """(B,) score of head outputs: log-odds of class ``class_index`` for (B, K) logits, else the (B,) output."""
    outputs = outputs.float()
    if class_index is None:
        if outputs.dim() != 1:
            raise ValueError(f"a head with outputs of shape {tuple(outputs.shape)} needs a class to explain")
        return outputs
    others = torch.cat([outputs[:, :class_index], outputs[:, class_index + 1 :]], dim=1)
    return outputs[:, class_index] - others.logsumexp(dim=1)


def task_score(
    task: DownstreamTask,
    images: torch.Tensor,
    keep: torch.Tensor,
    class_index: int | None,
    global_cbf: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) scores of a batch whose tokens are the patches that hold a ``keep`` voxel, pooled as the task pools;
    ``global_cbf`` (2,): the scan's global CBF scalars, for a task that reads them."""
    tokens, token_mask = task.encoder.forward_features(images, keep)
    pooled = pool_tokens(tokens, token_mask, task.hparams.pooling)
    scalars = None if global_cbf is None else global_cbf.expand(len(images), -1)
    return class_score(task.read_out(pooled, scalars), class_index)


@torch.inference_mode()
def occlusion(
    task: DownstreamTask,
    image: torch.Tensor,
    brain: torch.Tensor,
    class_index: int | None,
    batch_size: int = 16,
    global_cbf: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """Attribution of every patch of one scan, (L,) in grid order (0 for patches the task never sees), and its score.

    ``image`` and ``brain`` are one scan's (1, D, H, W) model input and brain mask, on ``task``'s device;
    ``global_cbf`` (2,) its global CBF scalars (the same for every occluded copy).
    """
    encoder = task.encoder
    p = encoder.patch_size
    # With "mean" pooling the task encodes every patch: all of them are tokens to leave out.
    keep = torch.ones_like(brain, dtype=torch.bool) if task.hparams.pooling == "mean" else brain.bool()
    tokens = brain_patches(keep[None], p, encoder.min_brain_fraction)[0]
    ids = tokens.nonzero().squeeze(1).tolist()
    if len(ids) < 2:
        raise ValueError(f"the scan has {len(ids)} brain patch(es): occlusion needs at least 2")
    full = float(task_score(task, image[None], keep[None], class_index, global_cbf)[0])
    attribution = torch.zeros(encoder.num_patches, device=image.device)
    grid = encoder.grid
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        masks = keep[None].repeat(len(chunk), 1, 1, 1, 1)
        for slot, index in enumerate(chunk):
            d, rest = divmod(index, grid[1] * grid[2])
            h, w = divmod(rest, grid[2])
            masks[slot, :, d * p : (d + 1) * p, h * p : (h + 1) * p, w * p : (w + 1) * p] = False
        images = image[None].expand(len(chunk), *image.shape)
        attribution[chunk] = full - task_score(task, images, masks, class_index, global_cbf)
    return attribution, full
