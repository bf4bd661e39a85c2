"""Harmonise and cache every scan listed in the manifests, before training.

`ichor fit` does this itself (in prepare_data), but running it first on a CPU node, with
many workers, keeps GPU time for training and shows every bad scan at once. Settings come
from the `data:` section of a Lightning config (--config, repeatable and composed in order as
for `ichor fit`), from options, or both (options win); the cache is the one `ichor fit` with
the same settings will reuse.

examples:
  ichor preprocess --config lightning_configs/common/demo.yaml --config lightning_configs/pretrain_demo.yaml --workers 8
  ichor preprocess --manifests study-01.csv study-02.csv --spacing 2 --shape 96 112 96
  ichor preprocess --config cfg.yaml --export-nifti harmonised/   # inspect the result in a viewer
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ichor.data.cache import export_nifti
from ichor.data.datamodule import CBFDataModule
from ichor.data.manifest import ManifestError, read_manifests

# The CBFDataModule arguments this command understands (the rest of a config's data section is ignored).
CACHE_ARGUMENTS = ("manifests", "cache_dir", "spacing", "shape", "volume", "on_bad_scan")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        action="append",
        help="Lightning config whose `data:` section holds the CBFDataModule arguments (repeatable, as for `ichor fit`)",
    )
    parser.add_argument("--manifests", nargs="+", help="per-study manifest CSVs")
    parser.add_argument("--cache-dir", dest="cache_dir", help="cache folder (default .ichor_cache)")
    parser.add_argument("--spacing", type=float, nargs="+", help="output voxel size in mm: one value or three")
    parser.add_argument("--shape", type=int, nargs=3, help="output grid in voxels (x y z)")
    parser.add_argument("--volume", help='for 4D files: a volume index or "mean"')
    parser.add_argument(
        "--on-bad-scan",
        dest="on_bad_scan",
        choices=("error", "skip"),
        help="error (default): exit 1 listing bad scans; skip: list them and exit 0",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes harmonising in parallel (default 2)")
    parser.add_argument(
        "--export-nifti",
        dest="export_nifti",
        type=Path,
        help="also write each harmonised map and brain mask as NIfTI under this folder",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except (OSError, ValueError) as error:
        print(f"ichor preprocess: {error}", file=sys.stderr)
        return 2
    datamodule = CBFDataModule(**settings, num_workers=args.workers, progress=args.progress)
    try:
        rows = read_manifests(datamodule.hparams.manifests)
        before = sum(datamodule.cache.lookup(path) is not None for path in rows["path"])
        failures = datamodule.build_cache(rows["path"])
    except ManifestError as error:
        print(f"ichor preprocess: {error}", file=sys.stderr)
        return 1
    problems = datamodule.problem_messages(rows, failures)
    good = len(rows) - len(problems)
    print(
        f"{len(rows)} scans: {good - before} harmonised, {before} already cached, {len(problems)} bad; "
        f"cache {datamodule.cache.folder}"
    )
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    if args.export_nifti is not None:
        count = export_nifti(rows, datamodule.cache, args.export_nifti)
        print(f"wrote {count} harmonised scans (CBF and brain-mask NIfTI) under {args.export_nifti}")
    return 1 if problems and datamodule.hparams.on_bad_scan == "error" else 0


def _settings(args: argparse.Namespace) -> dict:
    """CBFDataModule arguments from the config's data section, overridden by explicit options."""
    settings = {}
    if args.config:
        from ichor.training.runs import Run, parse_run  # Lightning, imported only to read a config

        data = parse_run(Run.of(args.config)).data
        settings = {key: value for key, value in (data.get("init_args") or {}).items() if key in CACHE_ARGUMENTS}
    for key in CACHE_ARGUMENTS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if "spacing" in settings and isinstance(settings["spacing"], list):
        spacing = settings["spacing"]
        settings["spacing"] = spacing[0] if len(spacing) == 1 else tuple(spacing)
    if "shape" in settings:
        settings["shape"] = tuple(settings["shape"])
    if isinstance(settings.get("volume"), str) and settings["volume"].lstrip("-").isdigit():
        settings["volume"] = int(settings["volume"])
    if not settings.get("manifests"):
        raise ValueError("no manifests: give --manifests, or --config with data.manifests")
    return settings
