"""95 % intervals by bootstrap over held-out studies and label draws.

A benchmark row is a grid of (held-out study, draw) results. The study is the unit a new site
would add and the draw the unit a new labelling would add, so both are resampled (with
replacement, independently) and the statistic is the mean over the resampled grid; the interval
is the 2.5th to 97.5th percentile of that mean. Seeded, so a report is reproducible.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

RESAMPLES = 2000
LEVEL = 0.95


def bootstrap_interval(values: pd.Series, seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float]:
    """The interval of the mean of ``values`` (indexed by ``fold`` and ``seed``); NaN with fewer than 2 values."""
    values = values.dropna()
    if len(values) < 2:
        return float("nan"), float("nan")
    grid = values.groupby(level=["fold", "seed"]).mean().unstack("seed").to_numpy()
    rng = np.random.default_rng(seed)
    folds = rng.integers(0, grid.shape[0], (resamples, grid.shape[0]))
    draws = rng.integers(0, grid.shape[1], (resamples, grid.shape[1]))
    # Grid cells missing for a (study, draw) pair stay missing; a resample of only missing cells is skipped.
    resampled = grid[folds[:, :, None], draws[:, None, :]]  # (resamples, studies, draws), all at once
    counts = np.isfinite(resampled).sum(axis=(1, 2))
    sums = np.where(np.isfinite(resampled), resampled, 0.0).sum(axis=(1, 2))
    means = np.divide(sums, counts, out=np.full(resamples, np.nan), where=counts > 0)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.nanpercentile(means, [tail, 100 - tail])
    return float(low), float(high)


def verdict(low: float, high: float) -> str:
    """``wins`` only when the interval of (reference - other, better > 0) excludes 0 above, ``loses`` below."""
    if np.isnan(low):
        return "ties"
    return "wins" if low > 0 else "loses" if high < 0 else "ties"
