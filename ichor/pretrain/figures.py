"""Reconstruction pictures for TensorBoard: orthogonal mid-slices of one validation scan."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def _mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal mid-slices of a RAS (x, y, z) volume, oriented for display."""
    x, y, z = (s // 2 for s in volume.shape)
    return [volume[:, :, z].T, volume[:, y, :].T, volume[x, :, :].T]


def reconstruction_figure(
    image: np.ndarray,
    masked: np.ndarray,
    reconstruction: np.ndarray,
    title: str,
    reconstruction_label: str = "reconstruction",
) -> Figure:
    """Rows input / masked input / reconstruction / |error|, columns axial / coronal / sagittal.

    All volumes are 3-D arrays on the same grid; input, masked input and reconstruction share
    one colour scale so that a too-dark or too-bright reconstruction shows as such.
    """
    error = np.abs(reconstruction - image)
    brain = image[image != 0]
    vmin, vmax = np.percentile(brain, [1, 99]) if brain.size else (0.0, 1.0)
    rows = [
        ("input", image, "gray", (vmin, vmax)),
        ("masked input", masked, "gray", (vmin, vmax)),
        (reconstruction_label, reconstruction, "gray", (vmin, vmax)),
        ("|error|", error, "magma", (0.0, max(float(np.percentile(error, 99.5)), 1e-6))),
    ]
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 10), squeeze=False)
    for r, (label, volume, cmap, (lo, hi)) in enumerate(rows):
        for c, plane in enumerate(_mid_slices(volume)):
            ax = axes[r, c]
            ax.imshow(plane, cmap=cmap, vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label)
    for c, name in enumerate(("axial", "coronal", "sagittal")):
        axes[0, c].set_title(name)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
