"""Simulated expert quality ratings: the target of the CBF-quality task, drawn the way raters score maps.

A latent quality falls with each artefact's severity and low SNR, plus rater noise, and is cut into four
levels scaled to 0-1; the model and why its weights: docs/reference/synthetic-data.md.
"""

from __future__ import annotations

import numpy as np

from ichor.synth.artefacts import Artefacts

RATING_LEVELS = ("unacceptable", "poor", "average", "excellent")
SEVERITY_WEIGHTS = {"att": 0.5, "labelfail": 1.0, "motion": 0.8, "dropout": 0.3}
SNR_WEIGHT = 0.35
SNR_GOOD = 4.5  # protocol SNR (GM CBF 60 / noise SD) at and above which noise does not bother a rater: the table's best
THRESHOLDS = (0.35, 0.6, 0.82)  # latent quality at the lower edge of poor, average, excellent
DEFAULT_RATER_NOISE = 0.08


def severity_burden(artefacts: Artefacts) -> float:
    """The weighted sum of a scan's artefact severities that lowers its rating (0 = clean)."""
    return float(sum(weight * getattr(artefacts, name) for name, weight in SEVERITY_WEIGHTS.items()))


def latent_quality(artefacts: Artefacts, snr: float, rater_error: float) -> float:
    """The latent quality q (docs/reference/synthetic-data.md); ``rater_error`` is rater_noise * e."""
    low_snr = float(np.clip(1 - snr / SNR_GOOD, 0, 1))
    return 1 - severity_burden(artefacts) - SNR_WEIGHT * low_snr + rater_error


def rating_level(quality: float) -> int:
    """Index into ``RATING_LEVELS`` of a latent quality."""
    return int(np.searchsorted(THRESHOLDS, quality, side="right"))


def rating(quality: float) -> float:
    """The rating scaled to 0-1: 0, 1/3, 2/3 or 1."""
    return rating_level(quality) / (len(RATING_LEVELS) - 1)


def rating_model() -> str:
    """The model in one line, from the constants above (for ``ichor synth --help``)."""
    burden = " + ".join(f"{w:g} {name}" for name, w in SEVERITY_WEIGHTS.items())
    cuts = ", ".join(f"{t:g}" for t in THRESHOLDS)
    return (
        f"latent quality = 1 - ({burden}) - {SNR_WEIGHT:g} clip(1 - SNR/{SNR_GOOD:g}, 0, 1) + e, "
        f"cut at {cuts} into {', '.join(RATING_LEVELS)}"
    )
