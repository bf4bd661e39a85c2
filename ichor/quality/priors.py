"""MNI152 tissue priors on a CBF map's grid, for QEI of maps already normalized to MNI space.

Many users only have CBF maps in MNI space (ExploreASL's Population folder, ASLPrep's
``space-MNI152...`` outputs) without per-subject segmentations. nilearn ships the MNI152
2009 GM and WM probability templates and a brain mask at 1 mm; CSF is what is left of the
brain, ``clip(brain - GM - WM, 0, 1)``. The priors are read once per process and resampled
(linear) once per target grid.
"""

from __future__ import annotations

from functools import lru_cache

import nibabel as nib
import numpy as np
from nilearn import datasets
from nilearn.image import resample_to_img

# Distinct grids kept resampled per process; a dataset usually has a handful (one per study).
GRID_CACHE_SIZE = 8
# NIfTI's code for coordinates in MNI152 space (sform_code / qform_code).
NIFTI_XFORM_MNI_152 = 4
# World box (mm, RAS) of the MNI152 brain, cerebellum included, less a 10 mm margin: an MNI-space
# map's field of view contains it.
MNI_BRAIN_BOX = ((-62.0, 62.0), (-96.0, 62.0), (-50.0, 70.0))


def mni_space_doubt(img: nib.spatialimages.SpatialImage) -> str | None:
    """Why a map may not be in MNI space (None when it looks so): then the priors fall on the wrong anatomy.

    A map is taken as MNI when its header says so, or when its field of view holds the MNI152 brain.
    """
    header = img.header
    codes = tuple(
        int(header[key]) if isinstance(header, nib.Nifti1Header) else 0 for key in ("sform_code", "qform_code")
    )
    if NIFTI_XFORM_MNI_152 in codes:
        return None
    corners = np.array([[i, j, k, 1] for i in (0, img.shape[0] - 1) for j in (0, img.shape[1] - 1)
                        for k in (0, img.shape[2] - 1)], dtype=np.float64)  # fmt: skip
    world = corners @ np.asarray(img.affine, dtype=np.float64).T
    low, high = world[:, :3].min(0), world[:, :3].max(0)
    if all(low[a] <= box[0] and high[a] >= box[1] for a, box in enumerate(MNI_BRAIN_BOX)):
        return None
    extent = " x ".join(f"{lo:.0f}..{hi:.0f}" for lo, hi in zip(low, high))
    return (
        f"not marked as MNI space (sform/qform codes {codes[0]}/{codes[1]}) and its field of view ({extent} mm) "
        "does not hold the MNI152 brain: --mni-priors assumes MNI space, so this QEI may be meaningless"
    )


@lru_cache(maxsize=1)
def mni_priors_1mm() -> tuple[nib.Nifti1Image, nib.Nifti1Image, nib.Nifti1Image]:
    """GM, WM and CSF probability maps of the MNI152 2009 template at 1 mm (float32, 0-1)."""
    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    brain = datasets.load_mni152_brain_mask(resolution=1)
    p_gm, p_wm = (np.clip(img.get_fdata(), 0, 1) for img in (gm, wm))
    p_csf = np.clip(brain.get_fdata() - p_gm - p_wm, 0, 1)
    return tuple(nib.Nifti1Image(p.astype(np.float32), gm.affine) for p in (p_gm, p_wm, p_csf))


def priors_on_grid(
    reference: nib.spatialimages.SpatialImage,
) -> tuple[nib.Nifti1Image, nib.Nifti1Image, nib.Nifti1Image]:
    """GM, WM and CSF MNI priors linearly resampled to ``reference``'s 3D grid (zero outside the template)."""
    affine = np.asarray(reference.affine, dtype=np.float64)
    return _resampled(tuple(int(n) for n in reference.shape[:3]), affine.tobytes())


@lru_cache(maxsize=GRID_CACHE_SIZE)
def _resampled(shape: tuple[int, int, int], affine_bytes: bytes) -> tuple[nib.Nifti1Image, ...]:
    affine = np.frombuffer(affine_bytes, dtype=np.float64).reshape(4, 4)
    target = nib.Nifti1Image(np.zeros(shape, dtype=np.uint8), affine)
    out = []
    for prior in mni_priors_1mm():
        img = resample_to_img(prior, target, interpolation="linear", force_resample=True, copy_header=True)
        data = np.clip(np.nan_to_num(img.get_fdata()), 0, 1).astype(np.float32)
        out.append(nib.Nifti1Image(data, affine))
    return tuple(out)
