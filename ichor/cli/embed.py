"""Write pooled encoder features, one row per scan (subject, session, study, path, f000, f001, ...).

Scans are harmonised with the encoder's own settings (from its encoder.json), so features
come from the grid and intensity scale the encoder was pre-trained on. Example:

  ichor embed --encoder runs/pretrain_demo/encoder --manifest data_manifests/demo/study-01.csv --out features.csv

--blocks 4 concatenates the last four blocks; --pooling region keeps coarse spatial layout
(brain tokens averaged per region of the grid, --regions parts per axis).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ichor.cli.scan_options import add_scan_arguments
from ichor.data.scans import ScanError
from ichor.evaluation.features import check_table_format, embed_scans, write_table
from ichor.evaluation.pooling import POOLINGS, REGIONS
from ichor.io import check_output
from ichor.models.weights import WeightsError

OUTPUT_OPTIONS = ("out", "overwrite")  # what the table becomes; every other option is an embed_scans parameter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--encoder",
        dest="encoder_path",
        metavar="ENCODER",
        required=True,
        help="`ichor export-encoder` folder, or a pre-training checkpoint",
    )
    parser.add_argument("--out", required=True, help="output table: .csv, or .parquet (needs pyarrow); a new file")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (never an input)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pooling", choices=POOLINGS, default="brain_mean", help="how tokens become one vector")
    parser.add_argument(
        "--blocks", type=int, default=1, help="read the last N blocks, concatenated (DINO's linear evaluation uses 4)"
    )
    parser.add_argument(
        "--regions", type=int, default=REGIONS, help="region pooling: parts per grid axis (2: 8 regions, 3: 27)"
    )
    parser.add_argument("--on-bad-scan", choices=("error", "skip"), default="error")
    add_scan_arguments(parser, manifest_help="manifest CSV(s)", workers_help="processes for caching and loading")


def run(args: argparse.Namespace) -> int:
    try:
        inputs = [*args.manifests, args.encoder_path]
        check_output(check_table_format(args.out), inputs, args.overwrite)
        skipped = check_output(skipped_report_path(args.out), inputs, args.overwrite)  # part of the output
        skipped.unlink(missing_ok=True)  # a previous run's list, replaced under --overwrite
        options = {name: value for name, value in vars(args).items() if name not in OUTPUT_OPTIONS}
        table = embed_scans(**options, skipped_report=skipped)
        path = write_table(table, args.out)
    except (WeightsError, ScanError, RuntimeError, ValueError) as error:
        print(f"ichor embed: {error}", file=sys.stderr)
        return 1
    features = sum(1 for column in table.columns if column.startswith("f") and column[1:].isdigit())
    print(f"{len(table)} scans x {features} features written to {path}")
    if skipped.exists():
        print(f"bad scans left out (--on-bad-scan skip) are listed in {skipped}", file=sys.stderr)
    return 0


def skipped_report_path(out: str) -> Path:
    """Where the list of skipped scans goes: beside the output, ``<out stem>.skipped.csv``."""
    path = Path(out)
    return path.with_name(f"{path.stem}.skipped.csv")
