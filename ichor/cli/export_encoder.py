"""Export the encoder of a pre-training checkpoint (any method) for downstream use.

Writes DIR/encoder.safetensors (encoder weights only, no decoder) and DIR/encoder.json
(architecture, patch, input shape, voxel spacing, normalisation, data summary, pre-training
settings), each written atomically. Example:

  ichor export-encoder runs/pretrain_demo/checkpoints/last.ckpt --out runs/pretrain_demo/encoder
"""

from __future__ import annotations

import argparse
import sys

from ichor.models.weights import WeightsError, export_encoder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="Lightning checkpoint (.ckpt) of an `ichor fit` pre-training run")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")


def run(args: argparse.Namespace) -> int:
    try:
        out = export_encoder(args.checkpoint, args.out, overwrite=args.overwrite)
    except WeightsError as error:
        print(f"ichor export-encoder: {error}", file=sys.stderr)
        return 1
    print(f"encoder written to {out}")
    return 0
