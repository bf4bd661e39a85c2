"""A PNG of an attribution map: axial, coronal and sagittal slices through its strongest voxel, over the CBF map.

Drawn on the harmonised grid (RAS, isotropic voxels), where the three slices are true
orthogonal planes whatever the input's orientation; the NIfTI beside it is on the input's grid.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def slices_through(volume: np.ndarray, point: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices of a RAS (x, y, z) volume through ``point``, oriented for display."""
    x, y, z = point
    return [volume[:, :, z].T, volume[:, y, :].T, volume[x, :, :].T]


def attribution_figure(cbf: np.ndarray, attribution: np.ndarray, title: str) -> Figure:
    """CBF in grey with the attribution over it (red: towards the explained class, blue: away from it)."""
    point = tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(attribution)), attribution.shape))
    brain = cbf[cbf != 0]
    lo, hi = np.percentile(brain, [1, 99]) if brain.size else (0.0, 1.0)
    scale = max(float(np.abs(attribution).max()), 1e-12)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.8), squeeze=False)
    for ax, name, under, over in zip(
        axes[0], ("axial", "coronal", "sagittal"), slices_through(cbf, point), slices_through(attribution, point)
    ):
        ax.imshow(under, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        shown = ax.imshow(
            np.ma.masked_where(over == 0, over),
            cmap="RdBu_r",
            vmin=-scale,
            vmax=scale,
            alpha=0.6,
            origin="lower",
            interpolation="nearest",
        )
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=axes[0].tolist(), shrink=0.8, label="attribution")
    fig.suptitle(f"{title}\nslices through voxel {point}", fontsize=9)
    return fig


def save_figure(fig: Figure, path) -> None:
    """Write ``fig`` as PNG atomically and free it."""
    from ichor.io import atomic_path

    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=100)
    plt.close(fig)
