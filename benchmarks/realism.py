"""How real do `ichor synth` maps look? Statistics of the real ds000240 map against synthetic maps.

The peer is the one real CBF map reachable here (OpenNeuro ds000240 sub-01, Siemens 3D spiral
pCASL, 64 x 57 x 16 voxels of 4 x 3.93 x 6 mm, 96 mm of the head; ``--real``). The
synthetic maps are healthy controls rendered by the generator (as `ichor synth` renders a scan)
with the real map's own protocol (``MATCHED``). Every statistic is
computed on each map's own grid, inside its brain (non-zero voxels), with no tissue maps
(the real map has none):

- q05 / q50 / q95: within-brain CBF quantiles (mL/100g/min);
- contrast: mean of the upper quartile over mean of the lower quartile (a grey/white contrast
  proxy without segmentation);
- FWHM: spatial smoothness (mm) in-plane, from the variance of first differences between
  neighbouring brain voxels (the classic estimator of AFNI's 3dFWHMx), mean of the two in-plane axes;
- edge: mean gradient magnitude (per mm) on the brain's boundary voxels, relative to the median;
- negative: fraction of brain voxels below zero.

  .venv/bin/python benchmarks/realism.py --real PATH [--subjects 8] [--figure PNG]

It prints one table: the real map's value, the synthetic maps' mean and SD, their ratio, and
whether the synthetic mean lies within +-25 % of the real value (the goal of the real-data issue).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ichor.data.scans import load_cbf
from ichor.synth.artefacts import Artefacts
from ichor.synth.plan import SynthOptions, plan_scan
from ichor.synth.protocols import NATIVE_SPACE, Protocol
from ichor.synth.render import render_scan

TOLERANCE = 0.25
STATISTICS = ("q05", "q50", "q95", "contrast", "fwhm_mm", "edge", "negative")


def fwhm_along(values: np.ndarray, brain: np.ndarray, axis: int, voxel_mm: float) -> float:
    """Smoothness along one axis from the variance of first differences (Gaussian autocorrelation model)."""
    ahead = np.roll(brain, -1, axis=axis)
    pairs = brain & ahead
    pairs.take(-1, axis=axis)[...] = False  # no wrap-around pairs
    if pairs.sum() < 10:
        return float("nan")
    diff = (np.roll(values, -1, axis=axis) - values)[pairs]
    ratio = 1 - diff.var() / (2 * values[brain].var())
    if not 0 < ratio < 1:
        return float("nan")
    return voxel_mm * math.sqrt(-2 * math.log(2) / math.log(ratio))


def map_statistics(img: nib.Nifti1Image) -> dict[str, float]:
    values = img.get_fdata(dtype=np.float64)
    brain = values != 0
    inside = values[brain]
    q05, q25, q50, q75, q95 = np.percentile(inside, [5, 25, 50, 75, 95])
    voxel = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    boundary = brain & ~ndimage.binary_erosion(brain)
    gradient = np.sqrt(sum(g**2 for g in np.gradient(values, *voxel)))
    return {
        "q05": float(q05),
        "q50": float(q50),
        "q95": float(q95),
        "contrast": float(inside[inside >= q75].mean() / inside[inside <= q25].mean()),
        "fwhm_mm": float(np.nanmean([fwhm_along(values, brain, axis, voxel[axis]) for axis in (0, 1)])),
        "edge": float(gradient[boundary].mean() / q50),
        "negative": float((inside < 0).mean()),
    }


# The real map's acquisition, as a protocol of the generator: Siemens 3T pCASL with background
# suppression, segmented 3D readout (point spread as 3D GRASE's), PLD 1.5 s, labelling 1.6 s,
# 4 x 3.93 x 6 mm on a 64 x 57 x 16 grid (96 mm: partial coverage). The cohort is healthy adult
# volunteers (the ASLPrep test subject's age is not published: 20-50 years assumed).
MATCHED = Protocol(
    "Siemens", "PCASL", "3D GRASE", 3.0, 1.5, 1.6, True,
    (4.0, 3.93, 6.0), (4.4, 4.32, 8.28), NATIVE_SPACE, (4.0, 3.93, 6.0), (64, 57, 16),
    "RAS", 0.0, 4.5, 1.0, 35.0, 8.0,
)  # fmt: skip


def synthetic_maps(subjects: int, folder: Path) -> list[Path]:
    """Healthy controls of the matched protocol, rendered by the generator as ``ichor synth`` renders a scan."""
    paths = []
    for index in range(subjects):
        rendered = render_scan(plan_scan(0, 0, index, MATCHED, "CN", SynthOptions()))
        path = folder / f"synthetic-{index:02d}_cbf.nii.gz"
        nib.save(nib.Nifti1Image(rendered.cbf, rendered.affine), path)
        paths.append(path)
    return paths


def write_figure(real: np.ndarray, out: Path) -> None:
    """Axial slices of the real map above one synthetic control, clean, with a transit artefact and with dropout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = replace(plan_scan(0, 0, 1, MATCHED, "CN", SynthOptions()), artefacts=Artefacts())
    rows = {"real (ds000240)": real, "synthetic, clean": render_scan(plan).cbf}
    for name, artefacts in (("transit 0.8", Artefacts(att=0.8)), ("dropout 0.8", Artefacts(dropout=0.8))):
        rows[f"synthetic, {name}"] = render_scan(replace(plan, artefacts=artefacts)).cbf
    fig, axes = plt.subplots(len(rows), 6, figsize=(12, 2.3 * len(rows)))
    for row, (name, volume) in zip(axes, rows.items()):
        for ax, z in zip(row, np.linspace(1, volume.shape[2] - 2, 6).astype(int)):
            ax.imshow(np.rot90(volume[:, :, z]), cmap="gray", vmin=0, vmax=100)
            ax.axis("off")
        row[0].set_title(name, loc="left", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--real", type=Path, required=True, help="the real CBF map: OpenNeuro ds000240 sub-01's, in mL/100g/min"
    )
    parser.add_argument("--subjects", type=int, default=8, help="synthetic maps (default 8)")
    parser.add_argument("--figure", type=Path, help="also write a PNG of real and synthetic slices (0-100 mL/100g/min)")
    args = parser.parse_args()
    if not args.real.is_file():
        print(f"realism: no real map at {args.real}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    real = map_statistics(load_cbf(args.real))
    with tempfile.TemporaryDirectory() as folder:
        paths = synthetic_maps(args.subjects, Path(folder))
        synthetic = [map_statistics(load_cbf(path)) for path in paths]
    print(f"real: {args.real.name}; synthetic: {len(synthetic)} healthy controls of the matched protocol (seed 0)\n")
    print("| statistic | real | synthetic mean ± SD | synthetic / real | within ±25 % |")
    print("| --- | --- | --- | --- | --- |")
    for name in STATISTICS:
        values = np.array([s[name] for s in synthetic])
        ratio = values.mean() / real[name] if real[name] else float("inf")
        ok = abs(values.mean() - real[name]) <= TOLERANCE * abs(real[name])
        print(
            f"| {name} | {real[name]:.4g} | {values.mean():.4g} ± {values.std(ddof=1):.2g} | {ratio:.2f} | {'yes' if ok else 'no'} |"
        )
    if args.figure:
        write_figure(load_cbf(args.real).get_fdata(), args.figure)
        print(f"\nfigure: {args.figure}")
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
