"""Subject perfusion: CBF = f_GM * pGM + f_WM * pWM, with age, sex, individual and disease effects.

Numbers from docs/domain.md: healthy GM about 58, WM about 20 mL/100g/min; GM CBF falls about
0.45 %/year; women about 13 % higher; up to 2x between people of the same age and sex.
Disease patterns are regional multiplicative reductions (10-25 % at the core of the pattern
for a patient at stage 0.4-1), so that site and individual variation compete with them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ichor.synth.anatomy import region_map

DIAGNOSES = ("CN", "AD", "FTD", "SVD")
DEFAULT_CLASS_MIX = {"CN": 0.4, "AD": 0.2, "FTD": 0.2, "SVD": 0.2}

GM_RANGE = (40.0, 80.0)
WM_RANGE = (15.0, 30.0)
RATIO_RANGE = (2.2, 3.5)
GM_AGE_SLOPE = 0.0045  # fraction of GM CBF lost per year
FEMALE_FACTOR = 1.13

# Regional hypoperfusion patterns (region -> relative weight at the pattern's core):
#  AD: posterior cingulate / precuneus / parietal (docs/domain.md; AUC ~0.81 for PCC + precuneus);
#  FTD (behavioural variant): medial and orbital frontal, anterior cingulate, insula, anterior temporal;
#  SVD: reduced white-matter CBF, strongest in the deep and cortical watershed zones.
PATTERNS: dict[str, dict[str, float]] = {
    "AD": {"posterior_cingulate": 1.0, "precuneus": 1.0, "inferior_parietal": 0.8, "posterior_temporal": 0.5},
    "FTD": {
        "medial_prefrontal": 1.0,
        "orbitofrontal": 0.9,
        "anterior_cingulate": 0.9,
        "dorsolateral_prefrontal": 0.7,
        "anterior_temporal": 0.9,
        "insula": 0.6,
    },
    "SVD": {"watershed_deep": 1.0, "watershed_cortical": 0.5},
}
# Fractional reduction at the pattern core for stage 1 (stages 0.4-1 give 10-35 %: the 10-25 % regional
# reductions reported for AD, docs/domain.md). FTD's is larger because its pattern spreads over frontal
# cortex, where susceptibility loss and individual variation compete with it: at 0.25 a perfect reader of
# the demo's maps (the oracle features, linear model, held-out study) separated FTD from controls at AUROC
# 0.66, below ASL's reported 74-85 % (Du et al. 2006, Neurology; Steketee et al. 2016, Eur Radiol); at
# 0.35 it reaches 0.79.
REGIONAL_EFFECT = {"AD": 0.25, "FTD": 0.35, "SVD": 0.25}
GLOBAL_EFFECT = {"CN": 0.0, "AD": 0.04, "FTD": 0.03, "SVD": 0.05}
WM_EFFECT = {"SVD": 0.2}  # extra loss of all white-matter CBF at stage 1
AGE_OFFSET = {"CN": 0.0, "AD": 5.0, "FTD": -6.0, "SVD": 6.0}  # patients are older (FTD younger) than controls
REGIONAL_SD = 0.08  # SD of the log of the smooth individual regional variation
REGIONAL_CORRELATION_MM = 35.0


@dataclass(frozen=True)
class Subject:
    """One participant's ground truth (what the manifest and sidecar record)."""

    age: float
    sex: str  # "F" | "M"
    diagnosis: str
    stage: float  # disease stage 0 (CN) .. 1
    asymmetry: float  # -1 (left-dominant pattern) .. 1 (right-dominant)
    gm_cbf: float  # f_GM, mL/100g/min
    wm_cbf: float  # f_WM
    atrophy: float  # fraction of GM turned to CSF (age, neurodegeneration)
    head_scale: float  # brain size relative to MNI152

    def as_dict(self) -> dict:
        return asdict(self)


def draw_subject(rng: np.random.Generator, diagnosis: str, age_mean: float, age_sd: float) -> Subject:
    """Draw a subject of the given diagnosis from a cohort's age distribution."""
    age = float(np.clip(rng.normal(age_mean + AGE_OFFSET[diagnosis], age_sd), 20, 92))
    female = bool(rng.random() < 0.55)
    stage = 0.0 if diagnosis == "CN" else float(rng.uniform(0.4, 1.0))
    asymmetry = float(rng.uniform(-1, 1)) * (0.8 if diagnosis == "FTD" else 0.3)
    gm_young_male = rng.normal(66.0, 7.0)
    gm = gm_young_male * (1 - GM_AGE_SLOPE * (age - 20)) * (FEMALE_FACTOR if female else 1.0)
    gm = float(np.clip(gm, *GM_RANGE))
    ratio = float(np.clip(rng.normal(3.0, 0.25) * (1 - 0.003 * (age - 45)), *RATIO_RANGE))
    wm = float(np.clip(gm / ratio, *WM_RANGE))
    atrophy = float(np.clip(0.002 * (age - 40), 0, 0.12) + (0.05 * stage if diagnosis in ("AD", "FTD") else 0.0))
    head_scale = float(np.clip(rng.normal(0.97 if female else 1.0, 0.035), 0.88, 1.1))
    return Subject(
        round(age, 1),
        "F" if female else "M",
        diagnosis,
        round(stage, 3),
        round(asymmetry, 3),
        round(gm, 2),
        round(wm, 2),
        round(atrophy, 4),
        round(head_scale, 4),
    )


def disease_pattern(diagnosis: str, asymmetry: float) -> np.ndarray | float:
    """Where the diagnosis lowers CBF, in [0, 1] on the base grid (0 for controls)."""
    if diagnosis not in PATTERNS:
        return 0.0
    left, right = 1 - max(asymmetry, 0.0), 1 + min(asymmetry, 0.0)
    pattern = np.zeros_like(region_map("precuneus"))
    for name, weight in PATTERNS[diagnosis].items():
        np.maximum(
            pattern, weight * np.maximum(left * region_map(name, "L"), right * region_map(name, "R")), out=pattern
        )
    return pattern


def perfusion_multipliers(subject: Subject, effect_scale: float = 1.0) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Multipliers (GM component, WM component) that apply the subject's disease to healthy CBF."""
    pattern = disease_pattern(subject.diagnosis, subject.asymmetry)
    regional = REGIONAL_EFFECT.get(subject.diagnosis, 0.0) * pattern
    loss = subject.stage * effect_scale * (regional + GLOBAL_EFFECT[subject.diagnosis])
    gm_multiplier = 1 - loss
    wm_multiplier = gm_multiplier - subject.stage * effect_scale * WM_EFFECT.get(subject.diagnosis, 0.0)
    return gm_multiplier, wm_multiplier


def tissue_cbf(
    subject: Subject, gm: np.ndarray, wm: np.ndarray, regional_field: np.ndarray, effect_scale: float = 1.0
) -> np.ndarray:
    """True CBF on the base grid from (readout-blurred) tissue maps; ``regional_field`` is unit-SD smooth noise."""
    gm_multiplier, wm_multiplier = perfusion_multipliers(subject, effect_scale)
    cbf = subject.gm_cbf * (1 - subject.atrophy) * gm * gm_multiplier + subject.wm_cbf * wm * wm_multiplier
    return cbf * np.exp(REGIONAL_SD * regional_field)
