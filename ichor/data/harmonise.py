"""Put every CBF map on one brain-centred RAS grid, whatever its orientation, voxel size or field of view.

One resampling straight onto a lattice shared in world coordinates, brain mask and CBF by normalized
convolution, so scans align to whole voxels and edges keep their CBF (docs/reference/data-pipeline.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np
import torch
import torchio as tio

# Bump when the harmonised output of the same settings changes (it is part of the cache key).
HARMONISATION_VERSION = 1
ORIENTATION = "RAS"
# A voxel is brain when at least this fraction of its interpolation weight came from brain voxels.
MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class HarmonisationSettings:
    """Everything that decides the harmonised array of a scan (and nothing else: not normalization)."""

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    volume: int | str | None = None  # how load_cbf reduces a 4D series

    @classmethod
    def create(
        cls, spacing: float | tuple[float, float, float], shape: tuple[int, int, int], volume: int | str | None = None
    ) -> HarmonisationSettings:
        spacing = (float(spacing),) * 3 if isinstance(spacing, (int, float)) else tuple(float(s) for s in spacing)
        shape = tuple(int(n) for n in shape)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing must be one positive number or three, got {spacing}")
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be three positive integers, got {shape}")
        return cls(spacing, shape, volume)

    def as_dict(self) -> dict:
        """JSON-serialisable description, as recorded with the cache and in model metadata."""
        return {
            **asdict(self),
            "spacing": list(self.spacing),
            "shape": list(self.shape),
            "orientation": ORIENTATION,
            "centring": "brain centroid, snapped to the spacing lattice",
            "interpolation": "linear, normalized by the resampled brain support; anti-aliased when down-sampling",
            "mask_threshold": MASK_THRESHOLD,
            "cache_version": HARMONISATION_VERSION,
        }

    def key(self) -> str:
        """Short hash of the settings: the name of their cache folder."""
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class HarmonisedScan:
    """A scan on the output grid: raw CBF (mL/100g/min, 0 outside the brain), brain mask, RAS affine."""

    cbf: np.ndarray  # float32, shape == settings.shape
    mask: np.ndarray  # bool
    affine: np.ndarray  # 4x4 float64, voxel -> world (RAS mm)


def brain_grid(
    support: np.ndarray, affine: np.ndarray, spacing: tuple[float, float, float], shape: tuple[int, int, int]
) -> np.ndarray:
    """RAS affine of the output grid, centred on the support's centroid and on the world lattice."""
    index_centroid = np.argwhere(support).mean(axis=0)
    centroid = affine[:3, :3] @ index_centroid + affine[:3, 3]
    spacing_arr, half = np.asarray(spacing), (np.asarray(shape) - 1) / 2
    origin = spacing_arr * np.round(centroid / spacing_arr - half)
    grid = np.diag([*spacing_arr, 1.0])
    grid[:3, 3] = origin
    return grid


class ResampleToBrainGrid(tio.Transform):
    """TorchIO transform: resample the ``cbf`` image onto its brain-centred grid and add a ``brain`` mask."""

    def __init__(self, spacing: tuple[float, float, float], shape: tuple[int, int, int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.spacing, self.shape = tuple(spacing), tuple(shape)
        self.args_names = ["spacing", "shape"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        cbf = subject["cbf"]
        data = cbf.data[0].numpy()
        support = data != 0
        grid = brain_grid(support, cbf.affine, self.spacing, self.shape)
        pair = tio.Subject(
            cbf=tio.ScalarImage(tensor=cbf.data.float(), affine=cbf.affine),
            support=tio.ScalarImage(tensor=torch.from_numpy(support[None].astype(np.float32)), affine=cbf.affine),
        )
        pair = tio.Resample((self.shape, grid), image_interpolation="linear", antialias=True)(pair)
        weight = pair["support"].data
        mask = weight >= MASK_THRESHOLD
        values = torch.where(mask, pair["cbf"].data / weight.clamp_min(MASK_THRESHOLD), torch.zeros(()))
        subject["cbf"] = tio.ScalarImage(tensor=values, affine=pair["cbf"].affine)
        subject["brain"] = tio.LabelMap(tensor=mask.to(torch.uint8), affine=pair["cbf"].affine)
        return subject


def harmonisation_transform(settings: HarmonisationSettings) -> tio.Compose:
    """The TorchIO pipeline applied once per scan (also usable on the fly in a tio.SubjectsDataset)."""
    return tio.Compose([tio.ToCanonical(), ResampleToBrainGrid(settings.spacing, settings.shape)])


def harmonise(image: nib.Nifti1Image, settings: HarmonisationSettings) -> HarmonisedScan:
    """Harmonise one checked 3D CBF image (as returned by ``ichor.data.scans.load_cbf``)."""
    data = np.asarray(image.dataobj, dtype=np.float32)
    subject = tio.Subject(cbf=tio.ScalarImage(tensor=torch.from_numpy(data[None]), affine=image.affine))
    subject = harmonisation_transform(settings)(subject)
    return HarmonisedScan(
        cbf=subject["cbf"].data[0].numpy().astype(np.float32, copy=False),
        mask=subject["brain"].data[0].numpy().astype(bool),
        affine=np.asarray(subject["cbf"].affine, dtype=np.float64),
    )
