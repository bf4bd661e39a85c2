"""Attribution maps as volumes: patch values to voxels, back onto a scan's own grid, and group averages.

The inverse of harmonisation (the same TorchIO ``Resample``) puts a map on its input's grid; group averages
stay on the harmonisation lattice, where scans differ by whole voxels and need no interpolation.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
import torchio as tio


def patch_volume(values: np.ndarray, grid: tuple[int, int, int], patch_size: int) -> np.ndarray:
    """(L,) patch values in grid order -> (D, H, W) volume, each patch's value on all its voxels."""
    volume = np.asarray(values, dtype=np.float32).reshape(grid)
    for axis in range(3):
        volume = np.repeat(volume, patch_size, axis=axis)
    return volume


def to_source_grid(volume: np.ndarray, affine: np.ndarray, source: nib.Nifti1Image) -> np.ndarray:
    """A harmonised-grid volume resampled (linear) onto ``source``'s grid; 0 outside the source's brain."""
    subject = tio.Subject(map=tio.ScalarImage(tensor=torch.from_numpy(volume[None].copy()), affine=affine))
    target = (tuple(source.shape[:3]), source.affine)
    resampled = tio.Resample(target, image_interpolation="linear")(subject)["map"].data[0].numpy()
    brain = np.asarray(source.dataobj, dtype=np.float32) != 0
    return np.where(brain, resampled, 0).astype(np.float32)


def lattice_offset(affine: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Integer lattice position of a harmonised grid's first voxel."""
    return np.round(affine[:3, 3] / spacing).astype(int)


class GroupAverage:
    """Voxel-wise mean of harmonised maps of one group, placed by their affines on one lattice grid."""

    def __init__(self, affines: list[np.ndarray], shape: tuple[int, int, int]) -> None:
        self.spacing = np.diag(affines[0])[:3].copy()
        offsets = np.stack([lattice_offset(affine, self.spacing) for affine in affines])
        self.origin = offsets.min(0)
        size = tuple(int(n) for n in offsets.max(0) - self.origin + np.asarray(shape))
        self.total = np.zeros(size, np.float64)
        self.count = np.zeros(size, np.int32)

    def add(self, volume: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> None:
        start = lattice_offset(affine, self.spacing) - self.origin
        region = tuple(slice(s, s + n) for s, n in zip(start, volume.shape))
        self.total[region] += np.where(brain, volume, 0)
        self.count[region] += brain

    def image(self) -> nib.Nifti1Image:
        """The mean (0 where no scan's brain reaches) with its RAS affine."""
        mean = np.where(self.count > 0, self.total / np.maximum(self.count, 1), 0).astype(np.float32)
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin * self.spacing
        return nib.Nifti1Image(mean, affine)
