"""Study protocols: one simulated site per study, each with its vendor, labelling, readout and output space.

The first studies come straight from ``PROTOCOL_TABLE`` (so even 4 studies differ in
resolution, orientation, vendor, readout and space); studies beyond the table cycle
through it again with their continuous parameters re-drawn from the study's seed.
Resolutions follow ExploreASL's defaults (docs/domain.md): 2D EPI point spread about 1;
3D GRASE 1.1 x 1.1 x 1.38; GE 3D spiral nominal 3.8 x 3.8 x 4 mm but effectively
4.3 x 4.4 x 10.1 mm, reconstructed upsampled in-plane.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

MNI_SPACE = "MNI152NLin2009cSym"
NATIVE_SPACE = "native"

# Quantification differences between vendors' pipelines (M0 scaling, labelling-efficiency
# assumptions): the site effect harmonisation has to absorb. (unverified magnitudes)
VENDOR_SCALE = {"Siemens": 1.00, "GE": 1.10, "Philips": 0.92}

# Voxel SNRs of the table: relative values between protocols from their readouts, field strengths and
# background suppression; absolute level calibrated on the one real map reachable (ds000240: Siemens
# 3T pCASL, segmented 3D readout, background suppression, 50 pairs, 4 x 3.9 x 6 mm): its texture
# (noise smoothness, lower tail, negative fraction; benchmarks/realism.py) matches a GM SNR of about
# 4.5, where the first table had 12 (all scaled by 0.375). The best protocol of the table now sits there.

# Relative loss of signal in the susceptibility regions at full dropout severity.
DROPOUT_SENSITIVITY = {"2D EPI": 1.0, "3D GRASE": 0.7, "3D spiral": 0.55}


@dataclass(frozen=True)
class Protocol:
    """How one study acquired and delivered its CBF maps."""

    vendor: str
    asl_type: str  # PCASL | PASL
    readout: str  # "2D EPI" | "3D GRASE" | "3D spiral"
    field_strength: float  # tesla
    pld: float  # s (for PASL the inversion time TI)
    labelling_duration: float  # s (for PASL the bolus duration TI1)
    background_suppression: bool
    acq_voxel_mm: tuple[float, float, float]  # nominal acquired voxel
    psf_fwhm_mm: tuple[float, float, float]  # effective resolution (voxel x point-spread factor)
    space: str  # NATIVE_SPACE or MNI_SPACE
    out_voxel_mm: tuple[float, float, float]  # voxel of the delivered map
    matrix: tuple[int, int, int]  # delivered grid (native space; MNI uses 121 x 145 x 121)
    orientation: str  # axis codes of the delivered affine, e.g. "RAS", "LPS", "LAS"
    oblique_deg: float  # slab tilt about the left-right axis (native space)
    snr: float  # typical GM voxel SNR (GM CBF 60 / noise SD), calibrated as said above the table
    site_scale: float  # multiplies the vendor scale: site-specific calibration
    age_mean: float  # cohort age distribution (years)
    age_sd: float

    @property
    def mr_acquisition_type(self) -> str:
        return self.readout[:2]

    @property
    def pulse_sequence(self) -> str:
        return self.readout.split(" ", 1)[1]

    @property
    def scale(self) -> float:
        return VENDOR_SCALE[self.vendor] * self.site_scale

    def as_dict(self) -> dict:
        return asdict(self)


def _psf(voxel: tuple[float, float, float], factor: tuple[float, float, float]) -> tuple[float, float, float]:
    return tuple(round(v * f, 3) for v, f in zip(voxel, factor))


GRASE_PSF = (1.1, 1.1, 1.38)
EPI_PSF = (1.0, 1.0, 1.0)
MNI_VOXEL = (1.5, 1.5, 1.5)

# One protocol a line, in Protocol's field order (label: asl_type; T: field strength; tau: labelling duration;
# BS: background suppression; axes: orientation; tilt: oblique_deg; site: site_scale). The sixth delivers a
# 96 mm slab, as the real ds000240 map: vertex and cerebellum partly cut.
# fmt: off
PROTOCOL_TABLE: tuple[Protocol, ...] = (
    #        vendor     label    readout      T    PLD    tau   BS     acquired voxel     effective resolution                space         delivered voxel      matrix           axes   tilt  SNR   site  age   SD
    Protocol("Siemens", "PCASL", "3D GRASE",  3.0, 1.8,   1.8,  True,  (3.75, 3.75, 4.0), _psf((3.75, 3.75, 4.0), GRASE_PSF), NATIVE_SPACE, (3.75, 3.75, 4.0),   (64, 64, 32),    "LPS", 0.0,  4.5,  1.00, 68.0, 8.0),
    Protocol("GE",      "PCASL", "3D spiral", 3.0, 2.0,   1.45, True,  (3.8, 3.8, 4.0),   (4.3, 4.4, 10.1),                   MNI_SPACE,    MNI_VOXEL,           (121, 145, 121), "RAS", 0.0,  3.75, 0.97, 72.0, 7.0),
    Protocol("Philips", "PCASL", "2D EPI",    3.0, 1.6,   1.65, True,  (3.0, 3.0, 7.0),   _psf((3.0, 3.0, 7.0), EPI_PSF),     NATIVE_SPACE, (3.0, 3.0, 7.0),     (80, 80, 17),    "RAS", 10.0, 2.6,  1.03, 55.0, 15.0),
    Protocol("Siemens", "PASL",  "2D EPI",    1.5, 1.8,   0.7,  False, (4.0, 4.0, 6.0),   _psf((4.0, 4.0, 6.0), EPI_PSF),     MNI_SPACE,    MNI_VOXEL,           (121, 145, 121), "LAS", 0.0,  1.9,  1.05, 74.0, 7.0),
    Protocol("GE",      "PCASL", "3D spiral", 3.0, 1.525, 1.45, True,  (3.8, 3.8, 4.0),   (4.3, 4.4, 10.1),                   NATIVE_SPACE, (1.875, 1.875, 4.0), (128, 128, 36),  "LAS", 0.0,  3.75, 1.00, 45.0, 18.0),
    Protocol("Philips", "PCASL", "3D GRASE",  3.0, 2.0,   1.8,  True,  (3.75, 3.75, 6.0), _psf((3.75, 3.75, 6.0), GRASE_PSF), NATIVE_SPACE, (3.75, 3.75, 6.0),   (64, 64, 16),    "LPS", -8.0, 4.1,  0.95, 62.0, 10.0),
    Protocol("Siemens", "PCASL", "2D EPI",    3.0, 1.2,   1.5,  False, (3.4, 3.4, 5.0),   _psf((3.4, 3.4, 5.0), EPI_PSF),     MNI_SPACE,    MNI_VOXEL,           (121, 145, 121), "RAS", 0.0,  2.25, 1.00, 70.0, 8.0),
    Protocol("GE",      "PCASL", "3D spiral", 1.5, 1.525, 1.5,  True,  (3.8, 3.8, 4.0),   (4.3, 4.4, 10.1),                   NATIVE_SPACE, (3.4, 3.4, 4.0),     (72, 72, 36),    "RAS", 0.0,  2.6,  1.04, 50.0, 12.0),
)
# fmt: on

ORIENTATIONS = ("RAS", "LPS", "LAS")


def study_protocol(study_index: int, rng: np.random.Generator) -> Protocol:
    """The protocol of study ``study_index`` (0-based): table entry, re-drawn on later cycles.

    ``rng`` is the study's own generator; it is consumed identically whatever the index so
    that the draws of other studies never depend on how many came before.
    """
    base = PROTOCOL_TABLE[study_index % len(PROTOCOL_TABLE)]
    jitter = {
        "pld": float(np.clip(base.pld + rng.uniform(-0.2, 0.2), 1.2, 2.0)),
        "snr": base.snr * float(rng.uniform(0.8, 1.25)),
        "site_scale": base.site_scale * float(np.exp(rng.normal(0, 0.05))),
        "age_mean": base.age_mean + float(rng.uniform(-8, 8)),
        "orientation": ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))],
        "oblique_deg": float(rng.uniform(-12, 12)) if base.space == NATIVE_SPACE else 0.0,
    }
    if study_index < len(PROTOCOL_TABLE):
        return base
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in jitter.items()}
    return replace(base, **rounded)
