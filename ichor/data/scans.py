"""Load one CBF map (or tissue map) and refuse it, with a reason, when it cannot be what it claims.

Every consumer (``ichor manifest check``, the datamodule, the QEI code) reads scans
through these functions, so a bad file is described the same way everywhere. The
messages say what is wrong but not which manifest row it came from: callers prefix
them with ``"<manifest> row <n> (<file>): "``.
"""

from __future__ import annotations

import gzip
import zlib
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from ichor.data.support import SupportError, brain_background_as_zero

# Plausible band for the median of the non-zero voxels of a CBF map in mL/100 g/min.
# Healthy adult GM is about 58 and WM about 20, children's GM about 97, elderly GM about
# 40 (docs/domain.md), so whole-brain medians sit around 25-70. The lower bound is kept well
# below that so that failed or low-labelling-efficiency maps (which the quality task must
# see, not drop) still load, yet it stays above the medians produced by the usual unit
# mistakes: mL/g/min (at most ~1), mL/g/s (~0.01) or a fraction. The upper bound catches
# raw ASL control/label or M0 signal and structural images (hundreds to thousands).
CBF_MEDIAN_MIN = 2.0
CBF_MEDIAN_MAX = 200.0

# Tissue probability maps are fractions; allow float rounding from resampling.
PROBABILITY_TOLERANCE = 0.01

# Two grids are "the same" when their affines agree to this many mm (header float32 rounding).
AFFINE_ATOL_MM = 1e-3
# Harmonisation resamples and smooths: a map needs at least this many voxels along every axis.
MIN_VOXELS_PER_AXIS = 4
# A human brain's map holds at least this much tissue (mL), even a neonate's slab; less is a header whose
# voxel sizes are wrong (millimetres written as metres or tenths) or not a brain map.
MIN_BRAIN_ML = 5.0

# What nibabel and the decompressors raise on damaged or foreign files.
_READ_ERRORS = (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError)


class ScanError(ValueError):
    """A scan that cannot be used; the message says what is wrong with it."""


def load_cbf(path: str | PathLike, volume: int | str | None = None, notes: list[str] | None = None) -> nib.Nifti1Image:
    """Read a CBF map in mL/100 g/min and check it; returns a 3D float32 image.

    ``volume`` picks one volume of a 4D series (an index) or averages them (``"mean"``);
    a series with more than one volume and no ``volume`` is an error, because averaging
    silently would hide that the manifest points at a time series instead of a map.
    Where the brain is comes from the map's own signal (:mod:`ichor.data.support`): non-finite
    background (ExploreASL's NaN outside the brain, a tissue mask's NaN) becomes 0, said in
    ``notes``; unmasked maps, lost slices and lost data inside the brain are refused.
    """
    img, data = _read(path)
    data = _select_volume(data, volume)
    _check_orientation(img)
    _check_affine(img.affine)
    _check_thickness(data.shape)
    voxel_ml = float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000
    try:
        data, found = brain_background_as_zero(data, voxel_ml=voxel_ml)
    except SupportError as error:
        raise ScanError(str(error)) from error
    if notes is not None:
        notes += found
    nonzero = data[data != 0]
    if nonzero.size == 0:
        raise ScanError("all voxels are zero (empty map)")
    if nonzero.size * voxel_ml < MIN_BRAIN_ML:
        sizes = ", ".join(f"{size:.4g}" for size in np.linalg.norm(img.affine[:3, :3], axis=0))
        raise ScanError(
            f"its brain holds {nonzero.size * voxel_ml:.3g} mL (voxels of {sizes} mm), less than any human brain's "
            f"{MIN_BRAIN_ML:g} mL: are the header's voxel sizes wrong (metres, or a factor of 10)?"
        )
    median = float(np.median(nonzero))
    if not CBF_MEDIAN_MIN <= median <= CBF_MEDIAN_MAX:
        raise ScanError(
            f"median of the non-zero voxels is {median:.4g}, outside the plausible CBF range "
            f"{CBF_MEDIAN_MIN:g}-{CBF_MEDIAN_MAX:g} mL/100g/min: wrong units "
            "(a fraction, mL/g/min or mL/g/s) or not a CBF map (raw ASL/M0 signal, a T1 image)?"
        )
    return _as_float32_image(img, data)


def load_tissue_map(path: str | PathLike, reference: nib.Nifti1Image | None = None) -> nib.Nifti1Image:
    """Read a GM/WM/CSF probability map; with ``reference``, require the same voxel grid.

    The QEI compares CBF and tissue maps voxel by voxel, so a map on another grid is an
    error here rather than a silent resampling.
    """
    img, data = _read(path)
    data = _select_volume(data, None)
    _check_affine(img.affine)
    _check_finite(data)
    low, high = float(data.min()), float(data.max())
    if low < -PROBABILITY_TOLERANCE or high > 1 + PROBABILITY_TOLERANCE:
        raise ScanError(f"values span {low:.4g}..{high:.4g}; a tissue probability map must lie in 0..1")
    if reference is not None:
        if data.shape != reference.shape[:3]:
            raise ScanError(
                f"shape {data.shape} differs from the CBF map's {reference.shape[:3]}; it must be on the CBF grid"
            )
        if not np.allclose(img.affine, reference.affine, atol=AFFINE_ATOL_MM):
            raise ScanError("affine differs from the CBF map's; it must be on the CBF grid")
    return _as_float32_image(img, data)


def _read(path: str | PathLike) -> tuple[nib.spatialimages.SpatialImage, np.ndarray]:
    """Open a NIfTI and read its voxels, turning every low-level failure into a ScanError."""
    path = Path(path)
    if not path.is_file():
        raise ScanError(f"file not found: {path}")
    try:
        img = nib.load(path)
    except _READ_ERRORS as error:
        raise ScanError(f"cannot read as NIfTI ({error})") from error
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ScanError(f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    try:
        data = np.asanyarray(img.dataobj)
    except _READ_ERRORS as error:
        raise ScanError(f"corrupt or truncated file ({error})") from error
    if data.dtype.kind not in "biuf":
        raise ScanError(f"voxels of type {img.get_data_dtype()} (RGB or complex?): a map holds one real value a voxel")
    return img, _scaling_zero_as_zero(img, data)


def _scaling_zero_as_zero(img: nib.spatialimages.SpatialImage, data: np.ndarray) -> np.ndarray:
    """Integer maps scaled by ``scl_slope``/``scl_inter``: values within half a step of 0 are 0.

    The stored integer nearest 0 can read back as about -1e-7 (float32 rounding of slope x value
    + intercept); a background that is not exactly 0 would read as signal outside the brain.
    """
    slope, inter = float(getattr(img.dataobj, "slope", 1.0)), float(getattr(img.dataobj, "inter", 0.0))
    if not np.issubdtype(img.get_data_dtype(), np.integer) or (slope, inter) == (1.0, 0.0):
        return data
    return np.where(np.abs(data) < abs(slope) / 2, 0, data).astype(data.dtype, copy=False)


def _select_volume(data: np.ndarray, volume: int | str | None) -> np.ndarray:
    """Reduce the data to 3D: drop trailing singleton axes, then pick or average volumes."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3:
        return data
    if data.ndim != 4:
        raise ScanError(f"expected a 3D map, got shape {data.shape}")
    count = data.shape[3]
    if volume is None:
        raise ScanError(
            f"4D series with {count} volumes (e.g. a CBF time series); point the manifest at the "
            'mean CBF map, or choose a volume index or "mean"'
        )
    if volume == "mean":
        return data.mean(axis=3, dtype=np.float64)
    if isinstance(volume, (int, np.integer)) and not isinstance(volume, bool) and -count <= volume < count:
        return data[..., volume]
    raise ScanError(f'volume must be an index in 0..{count - 1} or "mean", got {volume!r}')


def _check_orientation(img: nib.spatialimages.SpatialImage) -> None:
    """A NIfTI header must place its voxels once: a qform or an sform, and the two agreeing when both are set.

    With neither (both codes 0) the orientation is unknown (the NIfTI standard's "method 1"), so left
    and right could be swapped; two that disagree by more than a voxel make the map's place a guess
    (nibabel takes the sform, other tools the qform).
    """
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        return
    qform, q_code = img.get_qform(coded=True)
    sform, s_code = img.get_sform(coded=True)
    if not q_code and not s_code:
        raise ScanError(
            "no orientation in the header (qform_code and sform_code are 0): left and right are unknown; "
            "write the map with its orientation (e.g. the pipeline's own output, or fslorient)"
        )
    if q_code and s_code and np.all(np.isfinite(sform)):
        corners = np.array(
            [[i, j, k, 1] for i in (0, img.shape[0]) for j in (0, img.shape[1]) for k in (0, img.shape[2])]
        )
        apart = float(np.max(np.linalg.norm((corners @ (qform - sform).T)[:, :3], axis=1)))
        voxel = float(np.max(np.linalg.norm(sform[:3, :3], axis=0)))
        if apart > voxel:
            raise ScanError(
                f"the header's qform and sform disagree by up to {apart:.1f} mm (codes {int(q_code)} and "
                f"{int(s_code)}): where the map lies is ambiguous; keep one (e.g. fslorient -copysform2qform)"
            )


def _check_affine(affine: np.ndarray) -> None:
    """Reject affines that place voxels nowhere: non-finite, zero voxel size, or singular."""
    if not np.all(np.isfinite(affine)):
        raise ScanError("degenerate affine: it contains NaN/Inf")
    voxel_sizes = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(voxel_sizes <= 0):
        raise ScanError(f"degenerate affine: zero voxel size {tuple(np.round(voxel_sizes, 4))}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6 * float(np.prod(voxel_sizes)):
        raise ScanError("degenerate affine: singular (voxel axes are not independent)")


def _check_thickness(shape: tuple[int, ...]) -> None:
    """A map must span a few voxels on every axis: harmonisation (resampling, smoothing) needs them."""
    thin = [f"{'xyz'[axis]} ({size})" for axis, size in enumerate(shape[:3]) if size < MIN_VOXELS_PER_AXIS]
    if thin:
        raise ScanError(
            f"too thin to harmonise: {', '.join(thin)} voxel(s) along {'these axes' if len(thin) > 1 else 'this axis'}, "
            f"at least {MIN_VOXELS_PER_AXIS} needed (a single slice, or a map cut to a slab?)"
        )


def _check_finite(data: np.ndarray) -> None:
    """Tissue probability maps have no background convention to read NaN by: any NaN is an error."""
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise ScanError(f"{bad} non-finite voxels (NaN/Inf) of {data.size}; set voxels outside the brain to 0")


def _as_float32_image(img: nib.spatialimages.SpatialImage, data: np.ndarray) -> nib.Nifti1Image:
    """A 3D float32 Nifti1Image with the source's affine (and header fields, when NIfTI-1)."""
    header = img.header.copy() if isinstance(img, nib.Nifti1Image) else None
    out = nib.Nifti1Image(np.asarray(data, dtype=np.float32), img.affine, header=header)
    out.set_data_dtype(np.float32)
    return out
