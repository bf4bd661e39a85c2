"""How real do `ichor synth` maps look? Statistics of the real ds000240 map against synthetic maps.

The peer is the one real CBF map reachable here (OpenNeuro ds000240 sub-01, Siemens 3D spiral
pCASL, 64 x 57 x 16 voxels of 4 x 3.93 x 6 mm, 96 mm of the head; ../shared/data). The
synthetic maps are those of the protocol closest to it (by default study-06: 3D readout,
3.75 x 3.75 x 6 mm, native space), generated here with `ichor synth`. Every statistic is
computed on each map's own grid, inside its brain (non-zero voxels), with no tissue maps
(the real map has none):

- q05 / q50 / q95: within-brain CBF quantiles (mL/100g/min);
- contrast: mean of the upper quartile over mean of the lower quartile (a grey/white contrast
  proxy without segmentation);
- FWHM: spatial smoothness (mm) in-plane, from the variance of first differences between
  neighbouring brain voxels (the classic estimator of AFNI's 3dFWHMx), mean of the two in-plane axes;
- edge: mean gradient magnitude (per mm) on the brain's boundary voxels, relative to the median;
- negative: fraction of brain voxels below zero.

  .venv/bin/python benchmarks/realism.py [--real PATH] [--study study-06] [--subjects 8]

It prints one table: the real map's value, the synthetic maps' mean and SD, their ratio, and
whether the synthetic mean lies within +-25 % of the real value (the goal of the real-data issue).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ichor.data.scans import load_cbf
from ichor.synth import generate_dataset

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ds000240" / "sub-01_cbf.nii.gz"
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


def synthetic_maps(study: str, subjects: int, folder: Path) -> list[Path]:
    number = int(study.split("-")[1])
    manifests = generate_dataset(
        folder, n_studies=number, subjects_per_study=subjects, seed=0, workers=2, progress=False
    )
    return sorted((folder / study).glob("sub-*/sub-*_cbf.nii.gz")) if manifests else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, default=REAL, help="the real CBF map (default: ../shared/data/ds000240)")
    parser.add_argument("--study", default="study-06", help="synthetic study (protocol) to compare (default study-06)")
    parser.add_argument("--subjects", type=int, default=8, help="synthetic maps of that study (default 8)")
    args = parser.parse_args()
    if not args.real.is_file():
        print(f"realism: no real map at {args.real} (../shared/data lies beside the checkout)", file=sys.stderr)
        return 1
    start = time.perf_counter()
    real = map_statistics(load_cbf(args.real))
    with tempfile.TemporaryDirectory() as folder:
        paths = synthetic_maps(args.study, args.subjects, Path(folder))
        synthetic = [map_statistics(load_cbf(path)) for path in paths]
    print(f"real: {args.real.name}; synthetic: {len(synthetic)} maps of {args.study} (ichor synth, seed 0)\n")
    print("| statistic | real | synthetic mean ± SD | synthetic / real | within ±25 % |")
    print("| --- | --- | --- | --- | --- |")
    for name in STATISTICS:
        values = np.array([s[name] for s in synthetic])
        ratio = values.mean() / real[name] if real[name] else float("inf")
        ok = abs(values.mean() - real[name]) <= TOLERANCE * abs(real[name])
        print(
            f"| {name} | {real[name]:.4g} | {values.mean():.4g} ± {values.std(ddof=1):.2g} | {ratio:.2f} | {'yes' if ok else 'no'} |"
        )
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
