"""Render one planned scan: CBF map and GM/WM/CSF probability maps on the scan's own grid.

Order of operations follows the physics: true CBF on the subject's brain (base grid,
already blurred by the readout's point spread) -> artefacts -> vendor/site scale ->
head pose and resampling onto the delivered grid -> acquisition noise -> brain mask.
Tissue maps go through the same pose and resampling (with the partial-volume blur of
the delivered voxel, not the readout blur), so quality indices can use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np

from ichor.synth import artefacts as art
from ichor.synth.acquisition import BRAIN_CENTRE_MNI, ISOCENTRE_OFFSET, Sampler, head_pose, output_grid
from ichor.synth.anatomy import BASE_VOXEL_MM, FOLDING_MM, base_anatomy, blur, blurred, individual_tissue
from ichor.synth.fields import correlated_noise, smooth_field
from ichor.synth.physiology import PATTERNS, REGIONAL_CORRELATION_MM, disease_pattern, tissue_cbf
from ichor.synth.plan import ScanPlan, SynthOptions
from ichor.synth.protocols import MNI_SPACE, Protocol

REFERENCE_GM_CBF = 60.0  # SNR is quoted for this GM CBF
TISSUE_PV_FWHM = 0.7  # partial-volume blur of a delivered voxel, as a fraction of its size (box ~ Gaussian)
ORACLE_REGION = 0.5  # a disease pattern's region: where its weight (in [0, 1]) is at least this


@dataclass(frozen=True)
class RenderedScan:
    cbf: np.ndarray  # float32, mL/100g/min, 0 outside the brain
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    affine: np.ndarray
    #: What a perfect reader of this map would measure (:func:`oracle_features`): the benchmark's ceiling.
    oracle: dict[str, float] = field(default_factory=dict)


def tissue_fwhm(protocol: Protocol) -> tuple[float, float, float]:
    """Blur that turns the base-grid tissue maps into partial-volume maps of the delivered voxel."""
    if protocol.space == MNI_SPACE:
        return (0.0, 0.0, 0.0)
    return tuple(round(TISSUE_PV_FWHM * v, 3) for v in protocol.out_voxel_mm)


@cache
def oracle_regions() -> dict[str, np.ndarray]:
    """Each disease's pattern on the base grid, both hemispheres alike: the region a reader would outline."""
    return {diagnosis: np.asarray(disease_pattern(diagnosis, 0.0), np.float32) for diagnosis in PATTERNS}


def oracle_features(cbf: np.ndarray, brain: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean CBF inside each disease's region relative to the brain mean, and the log brain mean, of the final map.

    Measured on the map as delivered (noise, artefacts, pose and resampling included), through
    the scan's own regions (the patterns moved by its pose): the features a perfect reader of
    the map would use, so a linear model on them is a ceiling for any encoder on the same map.
    """
    brain_mean = float(cbf[brain].mean()) if brain.any() else 0.0
    features = {"log_brain_mean": float(np.log(max(brain_mean, 1e-3)))}
    for diagnosis, weight in regions.items():
        region = brain & (weight >= ORACLE_REGION)
        relative = float(cbf[region].mean()) / brain_mean if region.any() and brain_mean > 0 else float("nan")
        features[f"{diagnosis.lower()}_region_relative"] = round(relative, 6)
    features["log_brain_mean"] = round(features["log_brain_mean"], 6)
    return features


def warm_caches(protocols: list[Protocol]) -> None:
    """Compute the per-process caches up front (before forking workers, so they are shared)."""
    oracle_regions()
    for protocol in protocols:
        blurred("vessel", protocol.psf_fwhm_mm)
    art.edge_distance_mm()
    art.proximal_weight()


def base_cbf(
    plan: ScanPlan, options: SynthOptions, rng: np.random.Generator, tissue: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> np.ndarray:
    """The map the scanner would see before pose, resampling and noise (base grid, site-scaled).

    ``tissue`` is the subject's own (GM, WM, CSF) on the base grid.
    """
    anatomy, p, a, s = base_anatomy(), plan.protocol, plan.artefacts, plan.subject
    voxel = (BASE_VOXEL_MM,) * 3

    def field(correlation_mm: float) -> np.ndarray:
        return smooth_field(rng, anatomy.shape, voxel, correlation_mm)

    gm, wm = (blur(m, p.psf_fwhm_mm) for m in tissue[:2])
    cbf = tissue_cbf(s, gm, wm, field(REGIONAL_CORRELATION_MM), options.effect_scale)
    if a.att > 0:
        multiplier, vascular = art.transit_effects(a.att, blurred("vessel", p.psf_fwhm_mm), field(10.0))
        cbf = cbf * multiplier + vascular
    if a.dropout > 0:
        cbf = cbf * art.dropout_multiplier(a.dropout, p.readout, float(rng.uniform(-0.6, 0.6)))
    if a.labelfail > 0:
        multiplier, negative = art.labelling_failure(a.labelfail, field(60.0))
        cbf = cbf * multiplier + negative
    if a.motion > 0:
        wavelength = 2.5 * float(np.mean(p.acq_voxel_mm))
        cbf = cbf + art.edge_artefact(a.motion, wavelength, float(rng.uniform(0, 2 * np.pi)), field(50.0))
    return (cbf * p.scale).astype(np.float32)


def render_scan(plan: ScanPlan, options: SynthOptions | None = None) -> RenderedScan:
    """The scan's maps, determined by its plan alone."""
    options = options or SynthOptions()
    rng = plan.render_rng()
    p, s = plan.protocol, plan.subject
    anatomy = base_anatomy()
    tissue = individual_tissue(smooth_field(rng, anatomy.shape, (BASE_VOXEL_MM,) * 3, FOLDING_MM))
    cbf = base_cbf(plan, options, rng, tissue)

    isocentre = np.zeros(3) if p.space == MNI_SPACE else ISOCENTRE_OFFSET
    pose = head_pose(plan.rotation_deg, plan.translation_mm, s.head_scale if p.space != MNI_SPACE else 1.0, isocentre)
    shape, affine = output_grid(p, BRAIN_CENTRE_MNI + isocentre + np.asarray(plan.fov_shift_mm))
    sample = Sampler(anatomy, pose, shape, affine)

    fwhm = tissue_fwhm(p)
    cbf, gm, wm, csf = sample(cbf, *(blur(m, fwhm) for m in tissue))
    csf += gm * s.atrophy
    gm *= 1 - s.atrophy
    brain = (gm + wm + csf) > 0.5

    sigma = REFERENCE_GM_CBF / (p.snr * options.snr_scale) * art.noise_factor(plan.artefacts)
    noise = correlated_noise(rng, shape, p.out_voxel_mm, p.acq_voxel_mm) * np.float32(sigma)
    cbf = np.where(brain, cbf + noise, 0).astype(np.float32)
    regions = dict(zip(oracle_regions(), sample(*oracle_regions().values())))
    return RenderedScan(
        cbf, *(np.clip(m, 0, 1) for m in (gm, wm, csf)), affine=affine, oracle=oracle_features(cbf, brain, regions)
    )
