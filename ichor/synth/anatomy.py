"""The brain the synthetic subjects share: MNI152 2009 tissue maps and named regions on a 2 mm grid.

Tissue maps come from nilearn's bundled MNI152 2009 templates (no download); CSF is the
brain mask minus GM and WM. Everything is downsampled once to ``BASE_VOXEL_MM`` by block
averaging (so voxels hold true partial-volume fractions) and cached per process.
Regions are smooth Gaussian blobs at MNI coordinates, because no atlas can be fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
from scipy import ndimage

BASE_VOXEL_MM = 2.0
FOLDING_MM = 5.0  # scale of one person's gyri and sulci
FOLDING_SD = 0.3  # how far (in tissue share) the folding field moves tissue borders
SULCAL_LEVEL = 0.5  # |folding| below this is sulcus: about 40 % of the mantle
SULCAL_SD = 0.8  # the same for the grey/CSF border: the template's mantle is about 80 % grey, sulci must win
TISSUE_SHARPNESS = 0.1  # width of a tissue transition, in tissue share: crisp, not a step

# name -> (centres in MNI mm for the left hemisphere or the midline (x mirrored for the
# right), FWHM in mm). Coordinates from the usual MNI locations of these structures.
REGIONS: dict[str, tuple[tuple[tuple[float, float, float], ...], float]] = {
    # Alzheimer's disease: posterior cingulate / precuneus / parietal hypoperfusion
    "posterior_cingulate": (((-4, -48, 28),), 18),
    "precuneus": (((-7, -62, 42),), 22),
    "inferior_parietal": (((-44, -58, 42),), 24),
    "posterior_temporal": (((-56, -40, -4),), 22),
    # behavioural-variant FTD: frontal and anterior temporal hypoperfusion
    "medial_prefrontal": (((-6, 50, 10),), 22),
    "orbitofrontal": (((-22, 36, -16),), 20),
    "dorsolateral_prefrontal": (((-40, 32, 28),), 24),
    "anterior_cingulate": (((-5, 30, 22),), 18),
    "anterior_temporal": (((-40, 12, -30),), 20),
    "insula": (((-38, 6, 2),), 16),
    # border zones between arterial territories (distal flow, small-vessel disease)
    "watershed_cortical": (((-25, 20, 52), (-26, -20, 60), (-30, -55, 52), (-40, -72, 26)), 20),
    "watershed_deep": (((-24, 10, 26), (-25, -15, 30), (-26, -40, 28)), 18),
    # susceptibility signal loss near the sinuses and temporal bones
    "dropout_orbitofrontal": (((-16, 38, -22), (-5, 28, -24)), 20),
    "dropout_inferior_temporal": (((-42, -8, -36), (-50, -30, -28)), 20),
}

# Arterial paths (left side; mirrored) along which transit-delayed label stays intravascular.
ARTERIES: tuple[tuple[tuple[float, float, float], ...], ...] = (
    ((-14, 2, -14), (-32, 4, -8), (-38, -4, 0), (-40, -22, 8), (-42, -46, 16)),  # ICA -> MCA (Sylvian fissure)
    ((-40, -10, 6), (-50, -22, 38)),  # MCA branch over the convexity
    ((-3, 12, -8), (-3, 32, 6), (-3, 30, 22), (-3, 10, 32), (-3, -20, 38), (-3, -50, 34)),  # ACA / pericallosal
    ((-8, -20, -12), (-18, -36, -8), (-22, -60, -2), (-14, -82, 6)),  # PCA
)


@dataclass(frozen=True)
class Anatomy:
    """Tissue probability maps (GM, WM, CSF) and brain fraction on the base grid, with its affine."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """MNI coordinate of every voxel along each axis (the base affine is diagonal RAS)."""
        return tuple(self.affine[i, 3] + self.affine[i, i] * np.arange(n) for i, n in enumerate(self.shape))


def _block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    pad = [(0, (-n) % factor) for n in data.shape]
    data = np.pad(data, pad)
    shape = [n // factor for n in data.shape]
    return data.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))


@lru_cache(maxsize=1)
def base_anatomy() -> Anatomy:
    """MNI152 2009 GM/WM/brain at 1 mm, block-averaged to the base grid; CSF = brain - GM - WM."""
    from nilearn import datasets  # imported here: nilearn is slow to import and only needed once

    factor = int(BASE_VOXEL_MM)
    maps = [
        np.asarray(loader(resolution=1).get_fdata(dtype=np.float32))
        for loader in (
            datasets.load_mni152_gm_template,
            datasets.load_mni152_wm_template,
            datasets.load_mni152_brain_mask,
        )
    ]
    affine_1mm = datasets.load_mni152_brain_mask(resolution=1).affine
    gm, wm, brain = (_block_mean(np.clip(m, 0, 1), factor) for m in maps)
    brain = np.maximum(brain, np.minimum(gm + wm, 1))
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(brain - gm - wm, 0, 1)
    affine = affine_1mm.copy()
    affine[:3, :3] *= factor
    affine[:3, 3] += (factor - 1) / 2  # centre of the first block
    return Anatomy(*(a.astype(np.float32) for a in (gm, wm, csf, brain)), affine=affine)


def _gaussian_blob(centre: tuple[float, float, float], fwhm: float) -> np.ndarray:
    sigma = fwhm / 2.3548
    x, y, z = (
        np.exp(-0.5 * ((a - c) / sigma) ** 2).astype(np.float32) for a, c in zip(base_anatomy().axes_mm(), centre)
    )
    return x[:, None, None] * y[None, :, None] * z[None, None, :]


@cache
def region_map(name: str, side: str = "both") -> np.ndarray:
    """Blob map in [0, 1] of a named region; ``side`` "L", "R" or "both" hemispheres."""
    centres, fwhm = REGIONS[name]
    out = np.zeros(base_anatomy().shape, np.float32)
    for x, y, z in centres:
        sides = {"L": (-abs(x),), "R": (abs(x),), "both": (-abs(x), abs(x))}[side]
        for sx in sorted(set(sides)):
            np.maximum(out, _gaussian_blob((sx, y, z), fwhm), out=out)
    return out


def _distance_to_path(points: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Distance (mm) from each point (N, 3) to a polyline (M, 3)."""
    best = np.full(len(points), np.inf, np.float32)
    for a, b in zip(path[:-1], path[1:]):
        ab = b - a
        t = np.clip((points - a) @ ab / float(ab @ ab), 0, 1)
        d = np.linalg.norm(points - (a + t[:, None] * ab), axis=1)
        np.minimum(best, d, out=best)
    return best


@lru_cache(maxsize=1)
def vessel_map() -> np.ndarray:
    """Where delayed label shows as intravascular signal: major arteries and cortical sulci, in [0, 1].

    Arteries are tubes (about 4 mm across) along ``ARTERIES``; sulcal vessels are CSF lying
    next to cortex within 20 mm of the brain surface, which gives the curvilinear pattern of
    arterial transit artefacts.
    """
    anatomy = base_anatomy()
    inside = anatomy.brain > 0.05
    points = (np.argwhere(inside) * BASE_VOXEL_MM + anatomy.affine[:3, 3]).astype(np.float32)
    along = np.zeros(len(points), np.float32)
    for path in ARTERIES:
        for sign in (1, -1):
            p = np.array(path, np.float32) * np.array([sign, 1, 1], np.float32)
            np.maximum(along, np.exp(-0.5 * (_distance_to_path(points, p) / 2.0) ** 2), out=along)
    tubes = np.zeros(anatomy.shape, np.float32)
    tubes[inside] = along
    near_cortex = ndimage.gaussian_filter(anatomy.gm, 1.0)
    superficial = edge_distance_mm() > -20  # sulci, not the ventricles next to deep grey matter
    sulci = anatomy.csf * near_cortex * superficial
    sulci /= max(float(sulci.max()), 1e-6)
    return np.maximum(tubes, 0.6 * sulci) * inside


@lru_cache(maxsize=1)
def edge_distance_mm() -> np.ndarray:
    """Signed distance to the brain surface in mm (negative inside), for edge/ringing artefacts."""
    anatomy = base_anatomy()
    inside = anatomy.brain > 0.5
    outside_d = ndimage.distance_transform_edt(~inside) * BASE_VOXEL_MM
    inside_d = ndimage.distance_transform_edt(inside) * BASE_VOXEL_MM
    return (outside_d - inside_d).astype(np.float32)


def individual_tissue(folding: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One subject's (GM, WM, CSF) on the base grid, from a unit-SD ``folding`` field.

    The MNI152 template is a population average: inter-subject misregistration smears both its
    grey/white border and its sulci, so its cortex is a uniform grey mantle without sulcal CSF,
    and maps made from it lack the gyral texture that real maps show (the ds000240 map at 4 mm:
    bright gyri, dark sulci and white matter). A person's brain has its own folding: where the
    field is far from zero the mantle is gyrus (grey matter, with a white-matter core reaching
    into it); along its zero crossings, thin curved sheets, it is sulcus (CSF). Both tissue shares are sharpened around the template's value
    shifted by the field; the brain (GM + WM + CSF) is unchanged.
    """
    anatomy = base_anatomy()
    parenchyma = anatomy.gm + anatomy.wm
    gyral = np.abs(folding) - SULCAL_LEVEL  # < 0 on thin sheets along the field's zero crossings: sulci
    white = _sharpen(_share(anatomy.wm, parenchyma), FOLDING_SD * gyral)
    wm = parenchyma * white
    mantle = parenchyma * (1 - white) + anatomy.csf  # what is not white matter
    grey = _sharpen(_share(parenchyma * (1 - white), mantle), SULCAL_SD * gyral)
    return (mantle * grey).astype(np.float32), wm.astype(np.float32), (mantle * (1 - grey)).astype(np.float32)


def _share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    return np.divide(part, whole, out=np.zeros_like(whole), where=whole > 1e-6)


def _sharpen(share: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """A share in [0, 1] pushed towards 0 or 1 around 0.5, after ``shift``: crisp, not a step."""
    return 1 / (1 + np.exp(-(share - 0.5 + shift) / TISSUE_SHARPNESS))


def blur(source: np.ndarray, fwhm_mm: tuple[float, float, float]) -> np.ndarray:
    """A base-grid map blurred by an anisotropic Gaussian of total ``fwhm_mm``.

    The base grid's own 2 mm voxel is taken off in quadrature, so the result has about that
    resolution.
    """
    sigma = [np.sqrt(max(f**2 - BASE_VOXEL_MM**2, 0.0)) / 2.3548 / BASE_VOXEL_MM for f in fwhm_mm]
    if not any(s > 0 for s in sigma):
        return source
    return ndimage.gaussian_filter(source, sigma, mode="constant").astype(np.float32)


@cache
def blurred(name: str, fwhm_mm: tuple[float, float, float]) -> np.ndarray:
    """A shared base-grid map ("csf", "brain", "vessel") blurred to ``fwhm_mm`` (cached per process)."""
    return blur(vessel_map() if name == "vessel" else getattr(base_anatomy(), name), fwhm_mm)
