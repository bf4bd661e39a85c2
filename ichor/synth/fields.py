"""Smooth random fields and separable interpolation on regular grids.

Regional CBF variation, vascular-signal modulation and correlated acquisition noise are
all low-frequency patterns; building them as a tensor product of small 1D bases costs a
few matrix products instead of a 3D filter over a million voxels.
"""

from __future__ import annotations

import numpy as np


def gaussian_basis(n_voxels: int, voxel_mm: float, spacing_mm: float) -> np.ndarray:
    """(n_voxels, n_nodes) Gaussian bumps every ``spacing_mm``, rows normalized to sum 1."""
    extent = n_voxels * voxel_mm
    n_nodes = max(2, int(np.ceil(extent / spacing_mm)) + 2)
    nodes = (np.arange(n_nodes) - 1) * spacing_mm
    x = np.arange(n_voxels) * voxel_mm
    basis = np.exp(-0.5 * ((x[:, None] - nodes[None, :]) / spacing_mm) ** 2)
    return (basis / basis.sum(axis=1, keepdims=True)).astype(np.float32)


def linear_basis(n_out: int, step: float) -> np.ndarray:
    """(n_out, n_in) linear interpolation from a grid ``step`` output voxels apart."""
    n_in = int(np.ceil((n_out - 1) / step)) + 2
    position = np.arange(n_out) / step
    low = np.floor(position).astype(int)
    frac = (position - low).astype(np.float32)
    basis = np.zeros((n_out, n_in), np.float32)
    basis[np.arange(n_out), low] = 1 - frac
    basis[np.arange(n_out), low + 1] = frac
    return basis


def separable(coefficients: np.ndarray, bases: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Expand a small coefficient grid through one basis per axis: sum_abc C_abc Bx_ia By_jb Bz_kc."""
    return np.einsum("ia,jb,kc,abc->ijk", *bases, coefficients, optimize=True).astype(np.float32, copy=False)


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, int, int], voxel_mm: tuple[float, float, float], correlation_mm: float
) -> np.ndarray:
    """Zero-mean, unit-SD random field with structure on the scale of ``correlation_mm``."""
    bases = tuple(gaussian_basis(n, v, correlation_mm) for n, v in zip(shape, voxel_mm))
    coefficients = rng.standard_normal(tuple(b.shape[1] for b in bases)).astype(np.float32)
    field = separable(coefficients, bases)
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


def correlated_noise(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    out_voxel_mm: tuple[float, float, float],
    acq_voxel_mm: tuple[float, float, float],
) -> np.ndarray:
    """Noise that is white with unit SD on the acquisition grid, interpolated onto the output grid.

    A map reconstructed or resampled finer than it was acquired (GE spiral at 1.9 mm,
    ExploreASL's 1.5 mm MNI grid) has noise correlated over one acquired voxel, and a
    lower per-voxel SD, as interpolation averages; a map on its acquisition grid has
    white noise.
    """
    steps = [a / o for a, o in zip(acq_voxel_mm, out_voxel_mm)]
    if all(abs(s - 1) < 0.05 for s in steps):
        return rng.standard_normal(shape, dtype=np.float32)
    bases = tuple(linear_basis(n, max(s, 1.0)) for n, s in zip(shape, steps))
    coarse = rng.standard_normal(tuple(b.shape[1] for b in bases), dtype=np.float32)
    return separable(coarse, bases)
