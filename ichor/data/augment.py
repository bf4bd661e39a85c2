"""Light augmentation of cached, harmonised scans, in batch, on whatever device holds the batch.

Only the variation left between scans on one grid (flip, small affine, CBF level, noise), touching
brain voxels only; what and why: docs/reference/data-pipeline.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Axis 2 of a (B, 1, D, H, W) RAS batch runs left -> right.
LEFT_RIGHT_DIM = 2


@dataclass(frozen=True)
class Augmentation:
    """Probabilities (``*_p``) and magnitudes of each augmentation; a probability of 0 turns it off."""

    flip_p: float = 0.5
    affine_p: float = 0.0  # resampling costs ~30 ms per 2 mm scan on one CPU core: off by default
    rotation_deg: float = 5.0  # maximum, about each axis
    zoom: float = 0.05  # maximum relative change of size
    shift_voxels: float = 2.0  # maximum, along each axis
    intensity_p: float = 0.5
    intensity_range: float = 0.1  # image *= 1 + U(-r, r)
    noise_p: float = 0.2
    noise_std: float = 0.05  # relative to the scan's brain standard deviation

    def __post_init__(self) -> None:
        for name in ("flip_p", "affine_p", "intensity_p", "noise_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augment.{name} must be a probability in [0, 1], got {getattr(self, name)}")

    def __call__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        noise_levels: torch.Tensor,
        generator: torch.Generator | None = None,
        in_place: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch: (B, 1, D, H, W) float images and bool brain masks in, same out.

        ``noise_levels`` (B,) is each scan's brain standard deviation in the images' units;
        ``generator`` lives on the images' device (None: torch's default generator). Runs in
        the images' precision even under autocast. ``in_place``: a caller that owns the batch
        lets a CPU change the chosen scans where they are instead of copying the batch.
        """
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            draw = _Draws(images.shape[0], images.device, generator)
            if self.flip_p > 0:
                flip = draw.chance(self.flip_p)
                images, masks = (
                    on_chosen(flip, x, lambda scans, _: scans.flip(LEFT_RIGHT_DIM), in_place) for x in (images, masks)
                )
            if self.affine_p > 0:
                chosen = draw.chance(self.affine_p).view(-1, 1, 1, 1, 1)
                moved, moved_masks = self._affine(images, masks, draw)
                images, masks = torch.where(chosen, moved, images), torch.where(chosen, moved_masks, masks)
            if self.intensity_p > 0:
                factor = 1 + self.intensity_range * draw.symmetric(())
                images = on_chosen(
                    draw.chance(self.intensity_p),
                    images,
                    lambda scans, rows: scans * factor[rows].view(-1, 1, 1, 1, 1),
                    in_place,
                )
            if self.noise_p > 0:
                levels = self.noise_std * noise_levels

                def add_noise(scans: torch.Tensor, rows: slice) -> torch.Tensor:
                    noise = torch.randn(scans.shape, generator=generator, device=scans.device, dtype=scans.dtype)
                    return torch.where(masks[rows], scans + levels[rows].view(-1, 1, 1, 1, 1) * noise, scans)

                images = on_chosen(draw.chance(self.noise_p), images, add_noise, in_place)
            return images, masks

    def _affine(self, images: torch.Tensor, masks: torch.Tensor, draw: _Draws) -> tuple[torch.Tensor, torch.Tensor]:
        """Random small rotation/zoom/shift of every scan about the grid centre, in voxel units; mask by normalized convolution."""
        b, device = images.shape[0], images.device
        size = torch.tensor(images.shape[:1:-1], dtype=torch.float32, device=device)  # (W, H, D): affine_grid's x, y, z
        to_voxels = torch.diag_embed(size / 2).expand(b, 3, 3)
        angles = math.radians(self.rotation_deg) * draw.symmetric((3,))
        scale = 1 + self.zoom * draw.symmetric(())
        linear = torch.linalg.inv(to_voxels) @ (rotations(angles) * scale.view(-1, 1, 1)) @ to_voxels
        shift = self.shift_voxels * draw.symmetric((3,)) * 2 / size
        theta = torch.cat([linear, shift[..., None]], dim=2).to(images.dtype)
        stacked = torch.cat([images * masks, masks.to(images.dtype)], dim=1)
        grid = F.affine_grid(theta, list(stacked.shape), align_corners=False)
        moved = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weight = moved[:, 1:2]
        new_masks = weight >= 0.5
        return torch.where(new_masks, moved[:, 0:1] / weight.clamp_min(0.5), 0.0), new_masks


def on_chosen(
    chosen: torch.Tensor,
    x: torch.Tensor,
    change: Callable[[torch.Tensor, slice], torch.Tensor],
    in_place: bool = False,
) -> torch.Tensor:
    """``x`` (B, ...) with ``change(scans, rows)`` applied to the scans where ``chosen`` (B,) is True.

    On a CPU each chosen scan is changed through a view of it (``rows`` its slice), in ``x``
    itself when ``in_place``: drawing noise for scans that get none, and gathering or copying
    the batch for each step, were most of the cost of finishing a batch there. On other devices
    every scan is changed (``rows`` all of them) and the chosen ones selected, without a host sync.
    """
    if x.device.type != "cpu":
        return torch.where(chosen.view(-1, *(1,) * (x.ndim - 1)), change(x, slice(None)), x)
    rows = chosen.nonzero().flatten().tolist()
    if rows and not in_place:
        x = x.clone()
    for row in rows:
        scan = x[row : row + 1]
        scan.copy_(change(scan, slice(row, row + 1)))
    return x


class _Draws:
    """Per-scan random numbers for a batch of ``b`` scans, from one generator."""

    def __init__(self, b: int, device: torch.device, generator: torch.Generator | None) -> None:
        self.b, self.device, self.generator = b, device, generator

    def uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.rand((self.b, *shape), generator=self.generator, device=self.device)

    def symmetric(self, shape: tuple[int, ...]) -> torch.Tensor:
        """U(-1, 1) per scan."""
        return 2 * self.uniform(shape) - 1

    def chance(self, probability: float) -> torch.Tensor:
        """(B,) bool: which scans get an operation applied with this probability."""
        return self.uniform(()) < probability


def rotations(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles in radians about x, y, z -> (B, 3, 3) rotations Rz @ Ry @ Rx."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def matrix(*rows):
        return torch.stack([torch.stack(row, -1) for row in rows], -2)

    rx = matrix((one, zero, zero), (zero, cos[:, 0], -sin[:, 0]), (zero, sin[:, 0], cos[:, 0]))
    ry = matrix((cos[:, 1], zero, sin[:, 1]), (zero, one, zero), (-sin[:, 1], zero, cos[:, 1]))
    rz = matrix((cos[:, 2], -sin[:, 2], zero), (sin[:, 2], cos[:, 2], zero), (zero, zero, one))
    return rz @ ry @ rx
