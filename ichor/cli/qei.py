"""The automated CBF quality evaluation index (QEI; Dolui et al., JMRI 2024) per scan, as ASLPrep computes it.

  ichor qei --manifest data_manifests/*.csv --out qei.csv
      one row per scan: subject, session, study, path, qei, rho_ss, di, neg_gm. Each manifest
      row needs gm, wm, csf columns: tissue probability maps on the CBF map's grid.
  ichor qei --manifest m.csv --out qei.csv --annotated-manifest m_qei.csv
      also writes a copy of each manifest with a qei column (a new file; inputs are never modified).
  ichor qei sub-01_cbf.nii.gz --gm gm.nii.gz --wm wm.nii.gz --csf csf.nii.gz
      one scan: prints the QEI and its terms (and writes --out when given).
  ichor qei ... --mni-priors
      maps already in MNI space: the MNI152 2009 tissue priors, resampled to each map's grid,
      replace per-scan tissue maps.

QEI is in [0, 1], higher is better. rho_ss: structural similarity with a pseudo-CBF map;
di: pooled within-tissue variance / mean GM CBF; neg_gm: fraction (0-1) of GM voxels with
negative CBF (ASLPrep's QC table lists it x100).
A row that fails (missing or unreadable file, tissue map on another grid, empty tissue
mask, empty gm/wm/csf cell) is reported as "<manifest> row <n> (<file>): <what is wrong>";
all failures are listed together on stderr, the CSV still gets every good row (and the
annotated copy an empty qei), and the exit status is 1. A manifest that cannot be read
at all (missing columns, duplicates; see `ichor manifest check`) stops before any scan.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ichor.data.manifest import ManifestError, Problem, read_manifests
from ichor.data.schema import ID_COLUMNS
from ichor.io import check_output, real_path, write_csv
from ichor.quality.batch import (
    OUTPUT_COLUMNS,
    ScanFailure,
    missing_tissue_problems,
    result_table,
    score_rows,
    score_scan,
    write_annotated,
)
from ichor.quality.qei import DEFAULT_THRESH, QEIResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cbf", nargs="?", metavar="CBF.nii.gz", help="one CBF map (instead of --manifest)")
    parser.add_argument("--manifest", nargs="+", metavar="MANIFEST.csv", help="manifests whose rows to score")
    parser.add_argument("--gm", metavar="GM.nii.gz", help="GM probability map of CBF.nii.gz (on its grid)")
    parser.add_argument("--wm", metavar="WM.nii.gz", help="WM probability map of CBF.nii.gz")
    parser.add_argument("--csf", metavar="CSF.nii.gz", help="CSF probability map of CBF.nii.gz")
    parser.add_argument(
        "--mni-priors", action="store_true", help="maps are in MNI space: use MNI152 tissue priors (ignores gm/wm/csf)"
    )
    parser.add_argument(
        "--thresh",
        type=float,
        default=DEFAULT_THRESH,
        help=f"tissue probability above which a voxel is in a tissue mask (default {DEFAULT_THRESH}; ASLPrep 0.2.x used 0.8)",
    )
    parser.add_argument("--out", metavar="QEI.csv", help="CSV to write (required with --manifest)")
    parser.add_argument(
        "--annotated-manifest",
        nargs="+",
        metavar="OUT.csv",
        help="copies of the manifests (one per --manifest, same order) with a qei column added (new files, unless --overwrite)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")
    parser.add_argument("--workers", type=int, default=1, help="processes scoring scans in parallel (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    usage_error = _usage_error(args)
    if usage_error:
        print(f"ichor qei: {usage_error}", file=sys.stderr)
        return 2
    if args.manifest:
        return _run_manifests(args)
    return _run_single(args)


def _usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of arguments, before any file is read."""
    if bool(args.cbf) == bool(args.manifest):
        return "give either one CBF map or --manifest"
    if not 0 < args.thresh < 1:
        return f"--thresh must lie strictly between 0 and 1, got {args.thresh:g}"
    if args.workers < 1:
        return f"--workers must be at least 1, got {args.workers}"
    if args.manifest:
        if not args.out:
            return "--out is required with --manifest"
        if any((args.gm, args.wm, args.csf)):
            return (
                "--gm/--wm/--csf are for one CBF map; with --manifest the tissue maps come from its gm, wm, csf columns"
            )
        if args.annotated_manifest and len(args.annotated_manifest) != len(args.manifest):
            return (
                f"--annotated-manifest needs one output per --manifest ({len(args.manifest)}), "
                f"got {len(args.annotated_manifest)}"
            )
    else:
        if args.annotated_manifest:
            return "--annotated-manifest needs --manifest"
        if not args.mni_priors and not all((args.gm, args.wm, args.csf)):
            return "one CBF map needs --gm, --wm and --csf (tissue maps on its grid), or --mni-priors"
    if args.annotated_manifest and any(Path(path).is_dir() for path in args.manifest):
        return "--annotated-manifest copies manifest files: list them, not a folder"
    outputs = [path for path in (args.out, *(args.annotated_manifest or [])) if path]
    if len({real_path(path) for path in outputs}) < len(outputs):
        return "--out and each --annotated-manifest must be different files"
    inputs = [*(args.manifest or []), *([args.cbf] if args.cbf else [])]
    for path in outputs:
        try:
            check_output(path, inputs, args.overwrite)
        except ValueError as error:
            return str(error)
    return None


def _run_single(args: argparse.Namespace) -> int:
    tissues = None if args.mni_priors else {"gm": args.gm, "wm": args.wm, "csf": args.csf}
    try:
        notes: list[str] = []
        result = score_scan(args.cbf, tissues, args.thresh, notes)
    except ScanFailure as error:
        print(f"ichor qei: {error}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"warning: {Path(args.cbf).name}: {note}", file=sys.stderr)
    print(f"qei {result.qei:.4f}  rho_ss {result.rho_ss:.4f}  di {result.di:.4f}  neg_gm {result.neg_gm:.4f}")
    if args.out:
        row = {**dict.fromkeys(ID_COLUMNS, ""), "path": os.path.abspath(args.cbf), **vars(result)}
        write_csv(pd.DataFrame([row], columns=OUTPUT_COLUMNS), args.out)
    return 0


def _run_manifests(args: argparse.Namespace) -> int:
    try:
        rows = read_manifests(args.manifest)
    except ManifestError as error:
        print(error, file=sys.stderr)
        return 1
    problems = [] if args.mni_priors else missing_tissue_problems(rows)
    skipped = {(p.manifest, p.row) for p in problems}
    records = [
        record
        for record in rows.to_dict("records")
        if (record["manifest"], record["row"]) not in skipped and (record["manifest"], None) not in skipped
    ]
    results: dict[tuple[str, int], QEIResult] = {}
    bar = tqdm(total=len(records), desc="QEI", unit="scan", disable=args.quiet or not records)
    notes: list[Problem] = []
    for key, outcome, row_notes in score_rows(records, args.mni_priors, args.thresh, args.workers):
        notes += row_notes
        if isinstance(outcome, Problem):
            problems.append(outcome)
        else:
            results[key] = outcome
        bar.update()
    bar.close()

    write_csv(result_table(rows, results), args.out)
    for manifest, out in zip(args.manifest, args.annotated_manifest or []):
        write_annotated(manifest, out, results)

    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    order = {str(path): i for i, path in enumerate(args.manifest)}
    for problem in sorted(problems, key=lambda p: (order.get(p.manifest, len(order)), p.row or 0)):
        print(problem, file=sys.stderr)
    summary = f"wrote {args.out}: QEI of {len(results)} of {len(rows)} scans"
    if problems:
        print(f"{summary}; {len(problems)} problem{'s' if len(problems) != 1 else ''} (listed above)", file=sys.stderr)
        return 1
    print(summary)
    return 0
