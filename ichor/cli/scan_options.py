"""Options shared by the tools that harmonise scans into the cache and run an encoder on them (embed, explain).

Their ``dest`` names are the parameters of ``embed_scans`` and ``explain``, so that a tool passes
its parsed options on by name.
"""

from __future__ import annotations

import argparse


def add_scan_arguments(parser: argparse.ArgumentParser, manifest_help: str, workers_help: str) -> None:
    """--manifest, --cache-dir, --num-workers, --device, --no-progress; the helps say what the tool does with them."""
    parser.add_argument(
        "--manifest", dest="manifests", metavar="MANIFEST", nargs="+", required=True, help=manifest_help
    )
    parser.add_argument("--cache-dir", default=".ichor_cache", help="harmonised-scan cache (shared with training)")
    parser.add_argument("--num-workers", type=int, default=0, help=workers_help)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
