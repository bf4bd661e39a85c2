"""Generate a realistic multi-study synthetic ASL CBF dataset (ICHOR's demo data and test ground truth).

Each study is one simulated site/protocol (vendor, PCASL/PASL, 2D EPI / 3D GRASE / 3D spiral
readout, field strength, PLD, resolution, orientation, native or MNI space). Subjects
are controls (CN) or have one of three perfusion patterns: Alzheimer-like (AD),
behavioural-variant frontotemporal (FTD), small-vessel disease (SVD). Scans carry
artefacts with recorded severities: arterial transit (att), labelling failure
(labelfail), motion (motion) and susceptibility dropout (dropout). Each scan also gets a
simulated expert quality rating (column `rating`): unacceptable, poor, average or
excellent, stored as 0, 1/3, 2/3, 1, from its severities, its protocol's SNR and a
rater's error (model under --rater-noise).

Writes OUT/dataset_description.json and, per study, OUT/study-NN/manifest.csv with
sub-<label>/sub-<label>_cbf.nii.gz (mL/100 g/min), its JSON sidecar, and
sub-<label>_label-{GM,WM,CSF}_probseg.nii.gz on the CBF grid. The same seed gives
byte-identical files, whatever --workers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from ichor.synth.generate import generate_dataset, previous_studies
from ichor.synth.physiology import DEFAULT_CLASS_MIX, DIAGNOSES
from ichor.synth.plan import SynthOptions
from ichor.synth.rating import DEFAULT_RATER_NOISE, rating_model


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def parse_class_mix(text: str) -> tuple[tuple[str, float], ...]:
    """ "CN=0.4,AD=0.2,..." -> (("CN", 0.4), ("AD", 0.2), ...)."""
    mix = []
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            mix.append((name.strip(), float(value)))
        except ValueError:
            sep = ""
        if not sep or name.strip() not in DIAGNOSES:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected DIAGNOSIS=WEIGHT with DIAGNOSIS one of {', '.join(DIAGNOSES)}"
            )
    return tuple(mix)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default_mix = ",".join(f"{k}={v:g}" for k, v in DEFAULT_CLASS_MIX.items())
    add = parser.add_argument
    add("--out", required=True, type=Path, help="output folder; must be absent or empty unless --overwrite")
    add(
        "--studies",
        type=int,
        default=4,
        help="number of studies (sites); the first 8 follow the fixed "
        "protocol table, later ones cycle through it with re-drawn parameters (default: %(default)s)",
    )
    add(
        "--first-study",
        type=int,
        default=1,
        help="number of the first study: 5 with --studies 12 writes study-05 .. study-16 of the seed's "
        "dataset, other sites and people than a dataset of studies 1-4 (default: %(default)s)",
    )
    add("--subjects-per-study", type=int, default=50, help="subjects (one scan each) per study (default: %(default)s)")
    add(
        "--seed",
        type=int,
        default=0,
        help="random seed, >= 0; the same seed gives the same bytes (default: %(default)s)",
    )
    add(
        "--workers",
        type=int,
        default=default_workers(),
        help="processes rendering volumes (default: the CPU count, at most 8; here %(default)s)",
    )
    add(
        "--manifest-dir",
        type=Path,
        default=None,
        help="also write each study's manifest as MANIFEST_DIR/<study>.csv with paths relative to "
        "MANIFEST_DIR (default: not written)",
    )
    add(
        "--manifests-only",
        action="store_true",
        help="write the manifests and dataset_description.json without rendering any volume; "
        "rows are identical to a full run's (default: off)",
    )
    add(
        "--class-mix",
        type=parse_class_mix,
        default=default_mix,
        metavar="MIX",
        help="diagnosis proportions within each study, DIAGNOSIS=WEIGHT,... with diagnoses "
        f"{', '.join(DIAGNOSES)} (default: {default_mix})",
    )
    add(
        "--artefact-rate",
        type=float,
        default=1.0,
        help="multiplier on every artefact's probability; 0 = no artefacts (default: %(default)s)",
    )
    add(
        "--effect-scale",
        type=float,
        default=1.0,
        help="multiplier on disease effect sizes; 1 = 10-25%% regional hypoperfusion (default: %(default)s)",
    )
    add("--snr-scale", type=float, default=1.0, help="multiplier on every protocol's SNR (default: %(default)s)")
    add(
        "--rater-noise",
        type=float,
        default=DEFAULT_RATER_NOISE,
        help=f"SD of the simulated rater's error e: {rating_model()}; 0 = a rater who sees only the "
        "recorded artefacts and SNR (default: %(default)s)",
    )
    add(
        "--overwrite",
        action="store_true",
        help="write into a non-empty OUT; the study folders of an earlier `ichor synth` dataset there "
        "are removed first, nothing else is (default: off)",
    )
    add("--no-progress", action="store_true", help="no progress bar (default: shown)")


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        print(f"ichor synth: --out {out} exists and is not a folder", file=sys.stderr)
        return 2
    if out.is_dir() and any(out.iterdir()):
        if not args.overwrite:
            print(f"ichor synth: {out} is not empty; choose an empty folder or pass --overwrite", file=sys.stderr)
            return 2
        for study in previous_studies(out):
            shutil.rmtree(study)
    try:
        options = SynthOptions(args.class_mix, args.artefact_rate, args.effect_scale, args.snr_scale, args.rater_noise)
        manifests = generate_dataset(
            out,
            args.studies,
            args.subjects_per_study,
            seed=args.seed,
            workers=args.workers,
            manifest_dir=args.manifest_dir,
            progress=not args.no_progress,
            options=options,
            manifests_only=args.manifests_only,
            first_study=args.first_study,
        )
    except ValueError as error:
        print(f"ichor synth: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(manifests)} studies x {args.subjects_per_study} subjects to {out}")
    return 0
