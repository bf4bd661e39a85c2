"""Import an existing brain encoder (a MONAI ViT, or the encoder of MONAI's MaskedAutoEncoderViT) as an
ICHOR export folder, to embed, probe, fine-tune and benchmark like a pre-trained one.

The weights are mapped key by key (ichor/models/imports.py); a part ICHOR's encoder does not
have is refused by name. A MONAI checkpoint does not record the number of heads, nor how scans
were prepared for it: give them. Example (a ViT-B with 16^3 patches on 96^3 inputs, as BrainIAC's):

  ichor import-encoder --format monai-vit brainiac_vit.pt --num-heads 12 --spacing 2 --normalization zscore --out encoders/brainiac

--shape harmonises CBF maps to another grid than the source's input (its learned position
embeddings are then interpolated).
"""

from __future__ import annotations

import argparse
import sys
from typing import get_args

from ichor.cli.export_encoder import add_sharing_arguments, report
from ichor.data.datamodule import Normalization
from ichor.models.weights import WeightsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="MONAI state dict (.pt/.pth), or a checkpoint holding one")
    parser.add_argument("--format", required=True, choices=("monai-vit", "monai-mae"), help="the source network")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-heads", type=int, required=True, help="attention heads (not in the weights)")
    parser.add_argument("--spacing", type=float, nargs="+", required=True, help="voxel size in mm for scans (1 or 3)")
    parser.add_argument("--normalization", required=True, choices=get_args(Normalization))
    parser.add_argument("--cbf-scale", type=float, default=100.0, help="the CBF that 'scale' maps to 1")
    parser.add_argument("--img-size", type=int, nargs=3, help="the source's input shape (default: from its table)")
    parser.add_argument("--shape", type=int, nargs=3, help="harmonised grid for CBF maps (default: --img-size)")
    parser.add_argument("--prefix", help="state-dict prefix of the ViT inside a larger model (default: found)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    add_sharing_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ichor.models.imports import import_monai

    spacing = args.spacing[0] if len(args.spacing) == 1 else tuple(args.spacing)
    try:
        out = import_monai(
            args.checkpoint,
            args.out,
            args.format,
            num_heads=args.num_heads,
            spacing=spacing,
            normalization=args.normalization,
            img_size=args.img_size,
            shape=args.shape,
            cbf_scale=args.cbf_scale,
            prefix=args.prefix,
            licence=args.licence,
            citation=args.citation,
            overwrite=args.overwrite,
        )
        report(out, args.pack)
    except (WeightsError, ValueError) as error:
        print(f"ichor import-encoder: {error}", file=sys.stderr)
        return 1
    return 0
