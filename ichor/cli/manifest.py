"""Check manifests before training, or build one from ASLPrep/ExploreASL derivatives.

  ichor manifest check data_manifests/demo/*.csv
      reports every problem (missing files, duplicates, 4D series, NaNs, wrong units, ...)
      one per line; exit status 1 when there is any. --no-images skips opening the maps.
  ichor manifest from-bids /data/ds001/derivatives/aslprep --out data_manifests/ds001.csv
      writes one row per scan (subject, session, run) with participants.tsv, sidecar and QC
      columns; --space, --desc and --entity KEY=VALUE choose among a scan's maps.

The format is described in data_manifests/README.md. Neither command modifies its inputs.
"""

from __future__ import annotations

import argparse
import sys

from ichor.data.bids import DEFAULT_SPACE, DerivativesError, build_manifest
from ichor.data.manifest import ManifestError, Problem, check_manifests, count_rows, expand_manifests
from ichor.data.schema import COLUMNS

MAX_NOTES = 20  # notes listed by default: a study of slab acquisitions would otherwise list every map


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", required=True, metavar="{check,from-bids}")
    check = commands.add_parser(
        "check",
        help="report every problem in one or more manifests",
        epilog=columns_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("manifests", nargs="+", metavar="MANIFEST.csv")
    check.add_argument("--no-images", action="store_true", help="only check the tables and that files exist (fast)")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes opening the maps (default: one per CPU; 0: this process only)",
    )
    check.add_argument("--all-notes", action="store_true", help=f"list every note (default: the first {MAX_NOTES})")

    build = commands.add_parser("from-bids", help="write a manifest for ASLPrep or ExploreASL derivatives")
    build.add_argument(
        "root",
        metavar="DIR",
        help="derivatives folder, or a dataset containing derivatives/aslprep or derivatives/ExploreASL",
    )
    build.add_argument(
        "--out",
        required=True,
        metavar="MANIFEST.csv",
        help="manifest to write (paths in it are relative to its folder)",
    )
    build.add_argument("--study", help="study name for every row (default: the dataset's folder name)")
    build.add_argument("--desc", help="ASLPrep CBF variant, e.g. score, scrub, basil (default: the mean CBF map)")
    build.add_argument(
        "--space",
        help=f"ASLPrep output space, or 'native' for maps without space- (default: the only one, else {DEFAULT_SPACE})",
    )
    build.add_argument(
        "--entity",
        action="append",
        default=[],
        type=_entity,
        metavar="KEY=VALUE",
        help="ASLPrep: keep only the CBF maps with this BIDS entity value, e.g. acq=pcasl, res=2, run=1 "
        "(KEY= keeps the maps without KEY; repeat for several). Each run is otherwise its own row",
    )
    build.add_argument("--overwrite", action="store_true", help="replace MANIFEST.csv if it exists")


def _entity(text: str) -> tuple[str, str]:
    """``key=value`` of ``--entity``, as a pair."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or "-" in key or "_" in key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE with a BIDS entity key, e.g. acq=pcasl")
    return key.strip(), value.strip()


def columns_help() -> str:
    """The manifest columns ICHOR knows (ichor.data.schema), one a line, for ``ichor manifest check --help``."""
    lines = ["columns (any other column is a label, e.g. diagnosis):"]
    for column in COLUMNS:
        required = ", required" if column.required else ""
        lines.append(f"  {column.name:<15} {column.kind}{required}: {column.meaning}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.action == "check":
        return _check(args)
    return _from_bids(args)


def _check(args: argparse.Namespace) -> int:
    try:
        paths = expand_manifests(args.manifests)
    except ManifestError as error:
        print(error)
        return 1
    notes: list[Problem] = []
    problems = check_manifests(
        args.manifests,
        read_images=not args.no_images,
        progress=not (args.quiet or args.no_images),
        notes=notes,
        workers=args.workers,
    )
    shown = notes if args.all_notes else notes[:MAX_NOTES]
    for note in shown:
        print(f"note: {note}")
    if len(shown) < len(notes):
        print(f"note: ... and {len(notes) - len(shown)} more (--all-notes lists every one)")
    for problem in problems:
        print(problem)
    rows = count_rows(paths)
    manifests = len({problem.manifest for problem in problems} if problems else paths)
    summary = f"in {manifests} manifest{'s' if manifests != 1 else ''}, {rows} rows checked"
    if notes:
        summary += f"; {len(notes)} note{'s' if len(notes) != 1 else ''} (above)"
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} {summary}")
        return 1
    print(f"no problems {summary}" + (" (images not opened)" if args.no_images else ""))
    return 0


def _from_bids(args: argparse.Namespace) -> int:
    try:
        result = build_manifest(
            args.root,
            args.out,
            study=args.study,
            desc=args.desc,
            space=args.space,
            overwrite=args.overwrite,
            entities=dict(args.entity),
        )
    except DerivativesError as error:
        print(f"ichor manifest from-bids: {error}", file=sys.stderr)
        return 1
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.out}: {len(result.rows)} rows from {result.layout} derivatives in {result.source}")
    return 0
