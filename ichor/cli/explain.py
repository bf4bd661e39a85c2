"""Attribution maps of a trained task: where in each scan its prediction comes from (occlusion over patches).

Each brain patch's token is left out in turn and the change of the task's score is the patch's
attribution (a classifier's log-odds of the explained class; a regression's output): red where
the patch pushes towards the class. Costs one forward pass per brain patch of every scan.
Per scan, under --out: <study>/sub-<subject>[_ses-<session>]_attribution.nii.gz on the input
file's own grid (open it over the CBF map) and a PNG of three slices; per group,
group/<group>_attribution.nii.gz, the mean on the harmonisation lattice; explanations.csv.

  ichor explain runs/finetune_diagnosis/version_0/checkpoints/best.ckpt \\
      --manifest data_manifests/demo/study-01.csv --out explain/study-01 --class AD
"""

from __future__ import annotations

import argparse
import sys

from ichor.cli.scan_options import add_scan_arguments
from ichor.data.scans import ScanError
from ichor.explain import explain
from ichor.models.weights import WeightsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a downstream task's checkpoint (`ichor fit` with a task config)")
    parser.add_argument("--out", required=True, help="output folder (existing files in it need --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier outputs (never an input)")
    parser.add_argument(
        "--class", dest="class_name", help="class to explain in every scan (default: the predicted one)"
    )
    parser.add_argument("--group-by", help="manifest column of the group averages (default: the task's label)")
    parser.add_argument("--batch-size", type=int, default=16, help="occluded copies of a scan per forward pass")
    add_scan_arguments(
        parser, manifest_help="manifest CSV(s) of the scans to explain", workers_help="processes for caching"
    )


def run(args: argparse.Namespace) -> int:
    try:
        table = explain(**vars(args))  # every option is an explain parameter, by name
    except (WeightsError, ScanError, ValueError, OSError) as error:
        print(f"ichor explain: {error}", file=sys.stderr)
        return 1
    print(f"attribution maps of {len(table)} scans written to {args.out} (summary: explanations.csv)")
    return 0
