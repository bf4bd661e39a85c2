"""Every random choice about a dataset except the voxels: studies, subjects, labels, artefacts, poses.

Each scan's draws come from its own ``SeedSequence(seed, spawn_key=(study, subject, 0))``
(rendering uses ``(..., 1)``), so a scan's metadata and volumes never depend on the number
of workers, on the order scans are rendered, or on whether volumes are rendered at all.
Only the diagnosis allocation is a study-level draw, so each study gets the exact class mix.
The simulated expert rating (``rating``) is the last draw of a scan's metadata, so adding
it left every earlier draw as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ichor.synth.artefacts import Artefacts, draw_artefacts
from ichor.synth.physiology import DEFAULT_CLASS_MIX, DIAGNOSES, Subject, draw_subject
from ichor.synth.protocols import MNI_SPACE, Protocol, study_protocol
from ichor.synth.rating import DEFAULT_RATER_NOISE, latent_quality, rating

META, RENDER = 0, 1  # last element of a scan's spawn key


@dataclass(frozen=True)
class SynthOptions:
    """The generator's knobs (recorded in dataset_description.json)."""

    class_mix: tuple[tuple[str, float], ...] = tuple(DEFAULT_CLASS_MIX.items())
    artefact_rate: float = 1.0  # multiplies every artefact's presence probability
    effect_scale: float = 1.0  # multiplies every disease effect
    snr_scale: float = 1.0  # multiplies every protocol's SNR
    rater_noise: float = DEFAULT_RATER_NOISE  # SD of the simulated rater's error on the latent quality (rating.py)

    def __post_init__(self) -> None:
        unknown = [name for name, _ in self.class_mix if name not in DIAGNOSES]
        if unknown:
            raise ValueError(f"unknown diagnosis {unknown} in class mix; known: {', '.join(DIAGNOSES)}")
        if any(weight < 0 for _, weight in self.class_mix) or sum(w for _, w in self.class_mix) <= 0:
            raise ValueError(f"class mix weights must be >= 0 and not all 0, got {dict(self.class_mix)}")
        for name in ("artefact_rate", "effect_scale", "snr_scale", "rater_noise"):
            value = getattr(self, name)
            if value < 0 or (name == "snr_scale" and value == 0):
                raise ValueError(f"{name} must be {'> 0' if name == 'snr_scale' else '>= 0'}, got {value}")

    def as_dict(self) -> dict:
        return {
            "class_mix": dict(self.class_mix),
            "artefact_rate": self.artefact_rate,
            "effect_scale": self.effect_scale,
            "snr_scale": self.snr_scale,
            "rater_noise": self.rater_noise,
        }


@dataclass(frozen=True)
class ScanPlan:
    """Everything about one scan that is decided before rendering."""

    seed: int
    study_index: int
    subject_index: int
    study: str
    site: str
    label: str
    protocol: Protocol
    subject: Subject
    artefacts: Artefacts
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    fov_shift_mm: tuple[float, float, float]
    quality: float  # the simulated rater's latent quality (rating.py)
    rating: float  # 0, 1/3, 2/3 or 1: unacceptable, poor, average, excellent
    session: str = "01"

    def render_rng(self) -> np.random.Generator:
        return np.random.default_rng(
            np.random.SeedSequence(self.seed, spawn_key=(self.study_index, self.subject_index, RENDER))
        )


@dataclass(frozen=True)
class StudyPlan:
    study: str
    index: int
    protocol: Protocol
    scans: tuple[ScanPlan, ...] = field(default_factory=tuple)


def allocate_diagnoses(rng: np.random.Generator, n: int, class_mix: dict[str, float]) -> list[str]:
    """Exactly ``n`` diagnoses in the proportions of ``class_mix`` (largest remainder), shuffled."""
    names = [d for d in DIAGNOSES if class_mix.get(d, 0) > 0]
    weights = np.array([class_mix[d] for d in names], float)
    quota = weights / weights.sum() * n
    counts = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    labels = [d for d, c in zip(names, counts) for _ in range(c)]
    return [labels[i] for i in rng.permutation(n)]


def plan_scan(
    seed: int, study_index: int, subject_index: int, protocol: Protocol, diagnosis: str, options: SynthOptions
) -> ScanPlan:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(study_index, subject_index, META)))
    subject = draw_subject(rng, diagnosis, protocol.age_mean, protocol.age_sd)
    artefacts = draw_artefacts(rng, protocol, subject, options.artefact_rate)
    # Native scans: the head as positioned in the scanner. MNI maps: residual misregistration.
    rot_sd, shift_sd = (1.0, 1.5) if protocol.space == MNI_SPACE else (3.0, 3.0)
    rotation = rng.normal(0, rot_sd, 3)
    translation = rng.normal(0, shift_sd, 3)
    fov_shift = rng.normal(0, 4.0, 3)
    quality = round(latent_quality(artefacts, protocol.snr * options.snr_scale, options.rater_noise * rng.normal()), 3)
    return ScanPlan(
        seed,
        study_index,
        subject_index,
        study_id(study_index),
        f"site-{study_index + 1:02d}",
        subject_label(study_index, subject_index),
        protocol,
        subject,
        artefacts,
        _rounded(rotation),
        _rounded(translation),
        _rounded(fov_shift),
        quality,
        rating(quality),
    )


def _rounded(values: np.ndarray) -> tuple[float, float, float]:
    """Recorded values are the ones rendered, so the sidecar is the ground truth to the last digit."""
    return tuple(round(float(v), 3) for v in values)


def study_id(study_index: int) -> str:
    return f"study-{study_index + 1:02d}"


def subject_label(study_index: int, subject_index: int) -> str:
    """Unique over the dataset: S<study>P<participant>, e.g. S01P001."""
    return f"S{study_index + 1:02d}P{subject_index + 1:03d}"


def plan_dataset(
    n_studies: int,
    subjects_per_study: int,
    seed: int = 0,
    options: SynthOptions | None = None,
    first_study: int = 1,
) -> list[StudyPlan]:
    """Draw all per-study and per-scan metadata (cheap; no volumes).

    Studies ``first_study`` .. ``first_study + n_studies - 1`` of the seed's dataset: a second
    dataset starting after the first one's studies has other sites, protocols and people (a
    pre-training pool beside the labelled cohorts, with no subject in common).
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if first_study < 1:
        raise ValueError(f"first_study counts from 1, got {first_study}")
    if n_studies < 1 or subjects_per_study < 1:
        raise ValueError(f"need at least 1 study and 1 subject per study, got {n_studies} and {subjects_per_study}")
    options = options or SynthOptions()
    studies = []
    for si in range(first_study - 1, first_study - 1 + n_studies):
        study_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(si,)))
        protocol = study_protocol(si, study_rng)
        diagnoses = allocate_diagnoses(study_rng, subjects_per_study, dict(options.class_mix))
        scans = tuple(plan_scan(seed, si, sj, protocol, dx, options) for sj, dx in enumerate(diagnoses))
        studies.append(StudyPlan(study_id(si), si, protocol, scans))
    return studies
