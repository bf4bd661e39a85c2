"""Artefacts of real CBF maps, each with a severity in [0, 1] recorded per scan (0 = absent).

Arterial transit, labelling failure, motion and susceptibility dropout, as they look in a CBF map
(docs/reference/synthetic-data.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from ichor.synth.anatomy import base_anatomy, edge_distance_mm, region_map
from ichor.synth.physiology import Subject
from ichor.synth.protocols import DROPOUT_SENSITIVITY, Protocol

# Probability that a scan shows each artefact before protocol/subject modifiers. (unverified)
BASE_RATE = {"att": 0.2, "labelfail": 0.06, "motion": 0.18, "dropout": 0.3}
VASCULAR_PEAK = 400.0  # mL/100g/min of (unblurred) intravascular signal at full severity
EDGE_PEAK = 60.0  # mL/100g/min of label/control mismatch at the brain edge at full severity
DROPOUT_BORDER = 0.1  # width of a void's border, in units of the region map (a few mm)
NEGATIVE_ONSET = 0.4  # labelling-failure severity above which whole territories can go negative (unverified)
NEGATIVE_PEAK = 12.0  # mL/100g/min of negative subtraction error per territory SD at full severity (unverified)


@dataclass(frozen=True)
class Artefacts:
    """Severities in [0, 1]; 0 = absent."""

    att: float = 0.0
    labelfail: float = 0.0
    motion: float = 0.0
    dropout: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def presence_probability(protocol: Protocol, subject: Subject) -> dict[str, float]:
    """Chance of each artefact for this scan, before the user's rate multiplier."""
    short_pld = float(np.clip((2.0 - protocol.pld) / 0.8, 0, 1))
    older = float(np.clip(1 + (subject.age - 60) / 60, 0.5, 1.6))
    patient = subject.diagnosis != "CN"
    return {
        "att": BASE_RATE["att"] * (0.5 + 1.5 * short_pld) * older * (1.6 if subject.diagnosis == "SVD" else 1.0),
        "labelfail": BASE_RATE["labelfail"] * (1.3 if protocol.asl_type == "PASL" else 1.0),
        "motion": BASE_RATE["motion"] * (1.5 if patient else 1.0),
        "dropout": BASE_RATE["dropout"]
        * DROPOUT_SENSITIVITY[protocol.readout]
        * (1.3 if protocol.field_strength >= 3 else 0.8),
    }


def draw_artefacts(rng: np.random.Generator, protocol: Protocol, subject: Subject, rate: float = 1.0) -> Artefacts:
    """Draw which artefacts a scan has and how bad; ``rate`` scales every presence probability."""
    severities = {}
    for name, p in presence_probability(protocol, subject).items():
        present = rng.random() < min(p * rate, 0.95)
        severity = max(0.02, float(rng.beta(1.3, 3.0)))  # drawn either way: keeps later draws aligned
        severities[name] = round(severity, 3) if present else 0.0
    return Artefacts(**severities)


def transit_effects(
    severity: float, vessels: np.ndarray, modulation: np.ndarray
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """(tissue multiplier, additive intravascular CBF) of an arterial transit artefact.

    ``vessels`` is the readout-blurred vessel map; ``modulation`` a unit-SD field on the
    scale of a few sulci. The label still in arteries follows the vessel tree: serpiginous
    lines along the Sylvian fissure, the pericallosal arteries and the sulci, several times
    brighter than tissue, beaded along their length (``modulation``) rather than isolated
    blobs (the description raters use: docs/domain.md, Alsop 2015), strongest near the circle of
    Willis.
    """
    if severity <= 0:
        return 1.0, 0.0
    distal = np.maximum(region_map("watershed_cortical"), 0.6 * region_map("watershed_deep"))
    multiplier = (1 - 0.12 * severity) * (1 - 0.55 * severity * distal)
    patches = np.clip(0.6 + 0.4 * modulation, 0, None)
    vascular = VASCULAR_PEAK * severity * vessels * patches * proximal_weight()
    return multiplier, vascular


@lru_cache(maxsize=1)
def proximal_weight() -> np.ndarray:
    """1 at the circle of Willis, falling off towards distal territories (where label arrives last)."""
    x, y, z = base_anatomy().axes_mm()
    r2 = x[:, None, None] ** 2 + (y[None, :, None] + 5) ** 2 + (z[None, None, :] + 10) ** 2
    return np.exp(-np.sqrt(r2) / 60.0).astype(np.float32) * 2.0


def dropout_multiplier(severity: float, readout: str, asymmetry: float) -> np.ndarray | float:
    """Susceptibility signal loss near the sinuses and temporal bones; ``asymmetry`` in [-1, 1] favours one side.

    A void with a sharp border, not a gentle dimming: where the field gradient dephases the
    signal it is gone, a few millimetres away it is intact. Severity grows the void and deepens it.
    """
    if severity <= 0:
        return 1.0
    left, right = 1 - max(asymmetry, 0.0), 1 + min(asymmetry, 0.0)
    region = np.maximum(
        region_map("dropout_orbitofrontal"),
        np.maximum(
            left * region_map("dropout_inferior_temporal", "L"), right * region_map("dropout_inferior_temporal", "R")
        ),
    )
    strength = severity * DROPOUT_SENSITIVITY[readout]
    void = np.clip((region - (1 - strength)) / DROPOUT_BORDER, 0, 1)  # reaches further out as strength grows
    return 1 - min(0.95, 0.5 + strength) * void


def edge_artefact(severity: float, wavelength_mm: float, phase: float, sidedness: np.ndarray) -> np.ndarray | float:
    """Additive label/control mismatch at the brain edge: a rim that rings inwards.

    ``sidedness`` (smooth, unit SD) makes the rim bright on some sides and dark on others,
    as a head movement between label and control images does.
    """
    if severity <= 0:
        return 0.0
    d = edge_distance_mm()
    rim = np.exp(-((d / 5.0) ** 2)) * sidedness
    ringing = 0.5 * np.exp(-np.abs(d) / 10.0) * np.cos(2 * np.pi * d / wavelength_mm + phase)
    return EDGE_PEAK * severity * (rim + ringing)


def labelling_failure(severity: float, territory: np.ndarray) -> tuple[np.ndarray | float, np.ndarray | float]:
    """(multiplier, additive CBF) of a labelling failure; ``territory`` is smooth, unit SD.

    The multiplier is the global, territory-uneven loss of label. Above
    ``NEGATIVE_ONSET`` severity, territories that lost most label (``territory`` below
    its mean) also get a negative subtraction error, so negative voxels survive the 5 mm
    smoothing of the QEI, as in real failed scans.
    """
    if severity <= 0:
        return 1.0, 0.0
    multiplier = (1 - 0.8 * severity) * np.clip(1 + 0.35 * severity * territory, 0.3, 1.6)
    excess = max(0.0, (severity - NEGATIVE_ONSET) / (1 - NEGATIVE_ONSET))
    if excess == 0:
        return multiplier, 0.0
    return multiplier, -NEGATIVE_PEAK * excess * np.clip(-territory, 0, 2) * base_anatomy().brain


def noise_factor(artefacts: Artefacts) -> float:
    """How much more noise the artefacts bring (unstable label/control pairs).

    Labelling failure grows it quadratically: a mildly weak label is a quantification
    problem, a failed one leaves subtraction noise with little perfusion signal under it.
    """
    return 1 + 1.0 * artefacts.labelfail + 2.0 * artefacts.labelfail**2 + 1.5 * artefacts.motion
