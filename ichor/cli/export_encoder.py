"""Export the encoder of a pre-training checkpoint (any method), or of a LoRA task, for downstream use.

Writes DIR/encoder.safetensors (encoder weights only, no decoder) and DIR/encoder.json (the
adaptation record: architecture, grid, spacing, orientation, normalisation, pooling, data
summary, pre-training settings, software versions, licence, citation), each written atomically.
With --pack, also DIR.tar.gz, a reproducible archive to share, and its sha256, which pins it:

  ichor export-encoder runs/pretrain_demo/version_0/checkpoints/last.ckpt --out runs/pretrain_demo/encoder --pack

A run's folder (runs/pretrain_demo) stands for the last.ckpt of its newest version, as
`--ckpt_path last` does for `ichor fit` (the file is printed).

A LoRA task's checkpoint (``mode: lora``) exports its encoder with the adapters merged into the
weights, an encoder like any other whose encoder.json says what was merged (``adaptation``), and
the adapters alone beside it (lora.safetensors and lora.json, a few MB):

  ichor export-encoder runs/lora_diagnosis/version_0/checkpoints/best.ckpt --out runs/lora_diagnosis/encoder
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ichor.models.weights import WeightsError, export_encoder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        help="Lightning checkpoint (.ckpt) of an `ichor fit` pre-training run or LoRA task, or a run's folder "
        "(runs/<name>: the last.ckpt of its newest version)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    add_sharing_arguments(parser)


def add_sharing_arguments(parser: argparse.ArgumentParser) -> None:
    """--licence, --citation and --pack: shared with `ichor import-encoder`."""
    parser.add_argument("--licence", help="licence of the weights, recorded in encoder.json")
    parser.add_argument("--citation", help="how to cite the weights (default: the ICHOR paper)")
    parser.add_argument("--pack", action="store_true", help="also write OUT.tar.gz and print its sha256")


def report(out, pack: bool) -> None:
    """Say where the export went; with ``pack``, pack it and print the checksum and the pinned source."""
    from ichor.models.hub import pack_encoder, pinned_url

    print(f"encoder written to {out}")
    if pack:
        archive, sha256 = pack_encoder(out)
        print(f"packed: {archive}\nsha256: {sha256}\nsource: {pinned_url(archive, sha256)}")


def checkpoint_of(path: str) -> Path:
    """``path``, or for a run's folder (``runs/<name>``, holding ``version_<N>`` folders) its newest ``last.ckpt``."""
    if not Path(path).is_dir():
        return Path(path)
    from ichor.training.runs import newest_checkpoint  # Lightning, imported only for a run folder

    found = newest_checkpoint(Path(path), "last.ckpt")
    if found is None:
        raise WeightsError(f"{path}: a folder with no version_<N>/checkpoints/last.ckpt (name a .ckpt file)")
    print(f"exporting {found}")
    return found


def run(args: argparse.Namespace) -> int:
    try:
        out = export_encoder(
            checkpoint_of(args.checkpoint),
            args.out,
            overwrite=args.overwrite,
            licence=args.licence,
            citation=args.citation,
        )
        report(out, args.pack)
    except WeightsError as error:
        print(f"ichor export-encoder: {error}", file=sys.stderr)
        return 1
    return 0
