"""Light augmentation of cached, harmonised scans, run in the dataloader workers (training split only).

Scans are already on one grid, so augmentation only has to add the variation that remains
between real scans: left-right asymmetry of positioning (flip), small residual
misregistration (affine), global CBF level (intensity scaling: CBF varies up to 2x between
healthy people of the same age) and noise. Every operation works on (1, D, H, W) torch
tensors; spatial ones move the brain mask with the image, and intensity ones touch only
brain voxels, so the background stays exactly zero like a real CBF map. Randomness comes
from torch's global generator, which the DataLoader seeds per worker from its own seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Axis 1 of a (1, D, H, W) RAS tensor runs left -> right.
LEFT_RIGHT_DIM = 1


@dataclass(frozen=True)
class Augmentation:
    """Probabilities (``*_p``) and magnitudes of each augmentation; a probability of 0 turns it off."""

    flip_p: float = 0.5
    affine_p: float = 0.0  # resampling costs ~30 ms per 2 mm scan on one core: off by default
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

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, brain_std: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one scan; ``brain_std`` (in the image's units) sets the noise level."""
        if _chance(self.flip_p):
            image, mask = image.flip(LEFT_RIGHT_DIM), mask.flip(LEFT_RIGHT_DIM)
        if _chance(self.affine_p):
            image, mask = self._affine(image, mask)
        if _chance(self.intensity_p):
            image = image * (1 + self.intensity_range * (2 * torch.rand(()) - 1))
        if _chance(self.noise_p):
            image = torch.where(mask, image + self.noise_std * brain_std * torch.randn_like(image), image)
        return image, mask

    def _affine(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Random small rotation/zoom/shift about the grid centre, in voxel units; mask by normalised convolution."""
        size = torch.tensor(image.shape[:0:-1], dtype=torch.float32)  # (W, H, D): affine_grid's x, y, z
        angles = [math.radians(self.rotation_deg) * (2 * float(torch.rand(())) - 1) for _ in range(3)]
        matrix = _rotation(*angles) * (1 + self.zoom * (2 * float(torch.rand(())) - 1))
        to_voxels = torch.diag(size / 2)
        theta = torch.zeros(1, 3, 4)
        theta[0, :, :3] = torch.linalg.inv(to_voxels) @ matrix @ to_voxels
        theta[0, :, 3] = self.shift_voxels * (2 * torch.rand(3) - 1) * 2 / size
        stacked = torch.stack([image[0] * mask[0], mask[0].float()])[None]
        grid = F.affine_grid(theta, list(stacked.shape), align_corners=False)
        moved = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        weight = moved[1:2]
        new_mask = weight >= 0.5
        return torch.where(new_mask, moved[0:1] / weight.clamp_min(0.5), torch.zeros(())), new_mask


def _chance(probability: float) -> bool:
    return probability > 0 and float(torch.rand(())) < probability


def _rotation(a: float, b: float, c: float) -> torch.Tensor:
    """Rotation matrix about x, then y, then z."""
    ca, sa, cb, sb, cc, sc = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(c), math.sin(c)
    rx = torch.tensor([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = torch.tensor([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = torch.tensor([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rz @ ry @ rx
