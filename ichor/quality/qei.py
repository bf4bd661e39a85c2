"""The automated CBF quality evaluation index (QEI) of Dolui et al. (JMRI 2024, 60(6):2497-2508).

Computed as ASLPrep computes it, so a value compares with the ``qei_cbf`` column of its QC tables (steps and
formula: docs/domain.md); each term has its own function, checked against a closed-form answer, and what
would silently give NaN there (an empty tissue mask, grids that differ) raises ``QEIError`` here.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.processing import smooth_image

from ichor.data.scans import AFFINE_ATOL_MM

# Dolui et al. 2024 smooth every map to 5 mm FWHM first, so maps from sequences with
# different native resolution are scored on the same footing (ASLPrep: smooth_image(img, fwhm=5)).
SMOOTHING_FWHM_MM = 5.0

# Tissue probability above which a voxel counts as GM/WM/CSF. ASLPrep's current default is
# 0.7 (it was 0.8 in ASLPrep 0.2.x).
DEFAULT_THRESH = 0.7

# Pseudo-CBF = 2.5 pGM + 1.0 pWM: GM perfusion is about 2.5x WM perfusion in healthy adults
# (Dolui et al.; docs/domain.md gives GM/WM about 2.9), and CSF has no perfusion.
PSEUDO_CBF_GM_WEIGHT = 2.5
PSEUDO_CBF_WM_WEIGHT = 1.0

# Coefficients of the QEI model fitted to expert ratings. These are the values in ASLPrep's
# compute_qei, which its docstring says "match the actual values used in the original QEI
# implementation" (they differ slightly from those printed in the paper).
RHO_SCALE, RHO_EXPONENT = 3.0126, 2.4419  # structural-similarity factor 1 - exp(-a rho^b)
DI_SCALE, DI_EXPONENT = 0.054, 0.9272  # dispersion factor exp(-c DI^d)
NEG_GM_SCALE, NEG_GM_EXPONENT = 2.8478, 0.5196  # negative-GM factor exp(-e negGM^f)

TISSUES = ("GM", "WM", "CSF")


class QEIError(ValueError):
    """The QEI cannot be computed for these maps; the message says why."""


@dataclass(frozen=True)
class QEIResult:
    """The QEI and its three terms; ``neg_gm`` is a fraction in [0, 1] (ASLPrep reports it x100)."""

    qei: float
    rho_ss: float
    di: float
    neg_gm: float


def smooth_cbf(cbf_img: nib.Nifti1Image, fwhm_mm: float = SMOOTHING_FWHM_MM) -> np.ndarray:
    """The CBF map smoothed with a Gaussian of ``fwhm_mm`` in world units (uses the affine)."""
    return np.asarray(smooth_image(cbf_img, fwhm=fwhm_mm).get_fdata(), dtype=np.float64)


def tissue_masks(
    p_gm: np.ndarray, p_wm: np.ndarray, p_csf: np.ndarray, thresh: float = DEFAULT_THRESH
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GM, WM and CSF masks: probability > ``thresh``; an empty mask is an error naming the tissue."""
    masks = tuple(np.asarray(p) > thresh for p in (p_gm, p_wm, p_csf))
    empty = [tissue for tissue, mask in zip(TISSUES, masks) if not mask.any()]
    if empty:
        raise QEIError(
            f"empty {', '.join(empty)} mask: no voxel has tissue probability > {thresh:g} "
            "(lower the threshold, or check that the tissue maps are probabilities on this map's grid)"
        )
    return masks


def structural_similarity(smoothed_cbf: np.ndarray, p_gm: np.ndarray, p_wm: np.ndarray) -> float:
    """rho_ss: max(0, Pearson r) of the smoothed CBF with the pseudo-CBF 2.5 pGM + pWM.

    Taken over voxels where the smoothed CBF is non-zero and nothing is NaN; smoothing
    spreads the map past the brain edge, so the edge is part of that set (as in ASLPrep).
    An anti-correlated map scores 0, like an unrelated one.
    """
    pseudo_cbf = PSEUDO_CBF_GM_WEIGHT * np.asarray(p_gm, dtype=np.float64)
    pseudo_cbf += PSEUDO_CBF_WM_WEIGHT * np.asarray(p_wm, dtype=np.float64)
    cbf = np.asarray(smoothed_cbf, dtype=np.float64)
    voxels = (cbf != 0) & ~np.isnan(cbf) & ~np.isnan(pseudo_cbf)
    x, y = cbf[voxels], pseudo_cbf[voxels]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        raise QEIError(
            f"structural similarity undefined: {x.size} non-zero voxels, "
            f"CBF {'constant' if x.size and np.ptp(x) == 0 else 'varies'}, "
            f"pseudo-CBF {'constant' if y.size and np.ptp(y) == 0 else 'varies'} over them"
        )
    return max(0.0, float(np.corrcoef(x, y)[0, 1]))


def pooled_variance_index(
    smoothed_cbf: np.ndarray, gm_mask: np.ndarray, wm_mask: np.ndarray, csf_mask: np.ndarray
) -> float:
    """DI: pooled within-tissue variance sum((n_i - 1) var_i) / (sum(n_i) - 3), over |mean GM CBF|.

    var_i is the population variance of tissue i (numpy's default ddof=0, as in ASLPrep).
    Dividing by mean GM CBF makes DI comparable across subjects and sites whose CBF
    scale differs; it is variance over a mean (units mL/100g/min), not a coefficient of
    variation. A mean GM CBF of exactly 0 gives DI = inf (and QEI 0).
    """
    cbf = np.asarray(smoothed_cbf, dtype=np.float64)
    tissues = [cbf[np.asarray(mask, dtype=bool)] for mask in (gm_mask, wm_mask, csf_mask)]
    counts = [values.size for values in tissues]
    if min(counts) == 0 or sum(counts) <= len(tissues):
        raise QEIError(f"too few tissue voxels for a pooled variance: GM {counts[0]}, WM {counts[1]}, CSF {counts[2]}")
    pooled = sum((n - 1) * values.var() for n, values in zip(counts, tissues)) / (sum(counts) - len(tissues))
    mean_gm = abs(float(tissues[0].mean()))
    return float("inf") if mean_gm == 0 else float(pooled / mean_gm)


def negative_gm_fraction(smoothed_cbf: np.ndarray, gm_mask: np.ndarray) -> float:
    """negGM: fraction (0-1) of GM-mask voxels whose smoothed CBF is negative."""
    gm = np.asarray(smoothed_cbf)[np.asarray(gm_mask, dtype=bool)]
    if gm.size == 0:
        raise QEIError("empty GM mask: negative-GM fraction undefined")
    return float(np.count_nonzero(gm < 0) / gm.size)


def combine_qei(rho_ss: float, di: float, neg_gm: float) -> float:
    """QEI = [(1 - exp(-3.0126 rho^2.4419)) exp(-(0.054 DI^0.9272 + 2.8478 negGM^0.5196))]^(1/3)."""
    structure = 1.0 - np.exp(-RHO_SCALE * max(rho_ss, 0.0) ** RHO_EXPONENT)
    penalties = np.exp(-(DI_SCALE * max(di, 0.0) ** DI_EXPONENT + NEG_GM_SCALE * max(neg_gm, 0.0) ** NEG_GM_EXPONENT))
    return float(np.cbrt(structure * penalties))


def compute_qei(
    cbf_img: nib.Nifti1Image,
    gm_img: nib.Nifti1Image,
    wm_img: nib.Nifti1Image,
    csf_img: nib.Nifti1Image,
    thresh: float = DEFAULT_THRESH,
) -> QEIResult:
    """QEI of an unsmoothed 3D CBF map, given GM/WM/CSF probability maps on the same grid."""
    if len(cbf_img.shape) != 3:
        raise QEIError(f"expected a 3D CBF map, got shape {cbf_img.shape}")
    if not 0 < thresh < 1:
        raise QEIError(f"thresh must lie strictly between 0 and 1, got {thresh:g}")
    probabilities = []
    for tissue, img in zip(TISSUES, (gm_img, wm_img, csf_img)):
        _check_same_grid(tissue, img, cbf_img)
        probabilities.append(np.asarray(img.get_fdata(), dtype=np.float64).reshape(img.shape[:3]))
    smoothed = smooth_cbf(cbf_img)
    gm_mask, wm_mask, csf_mask = tissue_masks(*probabilities, thresh=thresh)
    rho_ss = structural_similarity(smoothed, probabilities[0], probabilities[1])
    di = pooled_variance_index(smoothed, gm_mask, wm_mask, csf_mask)
    neg_gm = negative_gm_fraction(smoothed, gm_mask)
    return QEIResult(qei=combine_qei(rho_ss, di, neg_gm), rho_ss=rho_ss, di=di, neg_gm=neg_gm)


def _check_same_grid(tissue: str, img: nib.Nifti1Image, cbf_img: nib.Nifti1Image) -> None:
    """The QEI compares maps voxel by voxel, so a tissue map on another grid is an error."""
    if img.shape[:3] != cbf_img.shape[:3]:
        raise QEIError(f"{tissue} map shape {img.shape[:3]} differs from the CBF map's {cbf_img.shape[:3]}")
    if not np.allclose(img.affine, cbf_img.affine, atol=AFFINE_ATOL_MM):
        raise QEIError(f"{tissue} map affine differs from the CBF map's; it must be on the CBF grid")
