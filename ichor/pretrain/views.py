"""Random views of a batch of CBF maps for contrastive learning, as batched torch ops.

SimCLR needs two strong views per scan per step, so they are drawn here on the accelerator for the whole
batch, from an explicit generator; which transformations and why: docs/reference/pretraining.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ichor.data.augment import LEFT_RIGHT_DIM, rotations

# affine_grid orders coordinates (x, y, z) = (W, H, D): the reverse of a (B, C, D, H, W) batch's
# spatial dims 2, 3, 4, so the batch's left-right dim is this grid coordinate.
LEFT_RIGHT_GRID_AXIS = 4 - LEFT_RIGHT_DIM


@dataclass(frozen=True)
class ViewAugmentation:
    """Probabilities (``*_p``) and magnitudes of each transformation; a probability of 0 turns it off.

    Crop: each view samples a cube of ``crop_scale`` (fraction of the field of view per axis,
    drawn in the range) at a random position, resized to the full grid.
    """

    flip_p: float = 0.5
    rotation_deg: float = 15.0  # maximum, about each axis
    crop_scale: tuple[float, float] = (0.7, 1.0)
    intensity_p: float = 0.8
    intensity_range: float = 0.3  # factor log-uniform in [1 / (1 + r), 1 + r]
    blur_p: float = 0.5
    blur_sigma: float = 1.5  # maximum, in voxels, drawn per axis
    noise_p: float = 0.5
    noise_std: float = 0.1  # maximum, relative to the scan's brain standard deviation

    def __post_init__(self) -> None:
        for name in ("flip_p", "intensity_p", "blur_p", "noise_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augmentation.{name} must be a probability in [0, 1], got {getattr(self, name)}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(
                f"augmentation.crop_scale must be (low, high) with 0 < low <= high <= 1, got {self.crop_scale}"
            )

    def __call__(
        self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One random view of every scan: (B, 1, D, H, W) images and bool brain masks in, same out.

        Runs in the input's precision even under autocast (the blur's normalised convolution
        divides by small sums).
        """
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            views, view_masks = random_resized_crop(images, masks, self, generator)
            factor = self._draw(
                views,
                self.intensity_p,
                generator,
                lambda u: torch.exp((2 * u - 1) * math.log1p(self.intensity_range)),
                1.0,
            )
            views = views * factor.view(-1, 1, 1, 1, 1)
            sigmas = self._draw(views, self.blur_p, generator, lambda u: u * self.blur_sigma, 0.0, axes=3)
            views = masked_blur(views, view_masks, sigmas)
            stds = self._draw(views, self.noise_p, generator, lambda u: u * self.noise_std, 0.0)
            noise = torch.randn(views.shape, generator=generator, device=views.device, dtype=views.dtype)
            views = views + (stds * brain_std(views, view_masks)).view(-1, 1, 1, 1, 1) * noise
            return torch.where(view_masks, views, 0.0), view_masks

    @staticmethod
    def _draw(images, probability, generator, value, off, axes: int | None = None) -> torch.Tensor:
        """Per-scan parameter ``value(u)`` (u uniform), or ``off`` for scans the coin excludes."""
        b, device = images.shape[0], images.device
        shape = (b,) if axes is None else (b, axes)
        u = torch.rand(shape, generator=generator, device=device)
        applied = torch.rand(b, generator=generator, device=device) < probability
        if axes is not None:
            applied = applied[:, None]
        return torch.where(applied, value(u), torch.full_like(u, off))


def random_resized_crop(
    images: torch.Tensor, masks: torch.Tensor, augmentation: ViewAugmentation, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate, crop, resize and flip every scan in one resampling; the mask by normalised interpolation.

    Rotations are in voxel units (``to_voxels``), so non-cubic grids are not sheared.
    """
    b, device = images.shape[0], images.device

    def uniform(*shape):
        return torch.rand(shape, generator=generator, device=device)

    size = torch.tensor(images.shape[:1:-1], dtype=torch.float32, device=device)  # (W, H, D)
    to_voxels = torch.diag_embed(size / 2).expand(b, 3, 3)
    angles = math.radians(augmentation.rotation_deg) * (2 * uniform(b, 3) - 1)
    low, high = augmentation.crop_scale
    scale = low + (high - low) * uniform(b, 1)
    flip = torch.ones(b, 3, device=device)
    flip[:, LEFT_RIGHT_GRID_AXIS] = torch.where(uniform(b) < augmentation.flip_p, -1.0, 1.0)
    linear = torch.linalg.inv(to_voxels) @ rotations(angles) @ to_voxels * scale[:, :, None]
    theta = torch.cat([linear * flip[:, None, :], ((1 - scale) * (2 * uniform(b, 3) - 1))[..., None]], dim=2)
    stacked = torch.cat([images * masks, masks.to(images.dtype)], dim=1)
    grid = F.affine_grid(theta.to(images.dtype), list(stacked.shape), align_corners=False)
    moved = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    weight = moved[:, 1:2]
    new_masks = weight >= 0.5
    return torch.where(new_masks, moved[:, 0:1] / weight.clamp_min(0.5), 0.0), new_masks


def gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """(N,) widths in voxels -> (N, 2 * radius + 1) normalised kernels; width 0 is the identity."""
    offsets = torch.arange(-radius, radius + 1, device=sigmas.device, dtype=sigmas.dtype)
    logits = -0.5 * (offsets[None, :] / sigmas.clamp_min(1e-3)[:, None]) ** 2
    return torch.softmax(logits, dim=1)


def masked_blur(images: torch.Tensor, masks: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur inside the brain, per scan and per axis: (B, 3) widths along (D, H, W).

    Normalised convolution (blur of image / blur of mask) so that the brain edge is not
    darkened by the zero background.
    """
    b = images.shape[0]
    radius = max(1, math.ceil(3 * float(sigmas.max())))
    stacked = torch.cat([images * masks, masks.to(images.dtype)], dim=1)  # (B, 2, D, H, W)
    x = stacked.reshape(1, 2 * b, *stacked.shape[2:])
    for axis in range(3):
        kernel = gaussian_kernels(sigmas[:, axis].to(images.dtype), radius).repeat_interleave(2, dim=0)
        shape = [2 * b, 1, 1, 1, 1]
        shape[2 + axis] = 2 * radius + 1
        padding = [0, 0, 0]
        padding[axis] = radius
        x = F.conv3d(x, kernel.reshape(shape), padding=tuple(padding), groups=2 * b)
    blurred = x.reshape(b, 2, *stacked.shape[2:])
    return torch.where(masks, blurred[:, 0:1] / blurred[:, 1:2].clamp_min(1e-6), 0.0)


def brain_std(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B,) standard deviation of each scan's brain voxels."""
    weights = masks.to(images.dtype)
    count = weights.sum((1, 2, 3, 4)).clamp_min(1)
    mean = (images * weights).sum((1, 2, 3, 4)) / count
    var = (((images - mean.view(-1, 1, 1, 1, 1)) * weights) ** 2).sum((1, 2, 3, 4)) / count
    return var.sqrt()
