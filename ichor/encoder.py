"""The Python face of an exported encoder, for notebooks and scripts (docs/tutorials/share-encoder.md).

Features come from :func:`ichor.evaluation.features.embed_scans`, the function behind ``ichor embed``, so
the two give the same numbers.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ichor.models.hub import resolve
from ichor.models.vit import ViTEncoder3D
from ichor.models.weights import load_encoder

ScanSource = str | os.PathLike | Sequence[str | os.PathLike]
IMAGE_SUFFIXES = (".nii", ".nii.gz")


class Encoder:
    """An exported encoder: its network (``network``, eval mode), its adaptation record (``metadata``)
    and the folder they came from (``folder``)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.network: ViTEncoder3D
        self.network, self.metadata = load_encoder(self.folder)
        self.network.eval()

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Encoder:
        """Load an export folder, or a packed encoder from a pinned ``https://`` / ``file://`` URL
        (``...tar.gz#sha256=<hex>``), fetched once into ``cache_dir`` (default :func:`ichor.models.hub.cache_dir`)."""
        return cls(resolve(source, cache_dir))

    def embed(
        self,
        scans: ScanSource,
        pooling: str | None = None,
        batch_size: int = 8,
        cache_dir: str = ".ichor_cache",
        device: str | None = None,
        num_workers: int = 0,
        on_bad_scan: str = "error",
        progress: bool = False,
    ) -> pd.DataFrame:
        """Pooled features, one row per scan (subject, session, study, path, f000, ...), as ``ichor embed`` writes.

        ``scans``: a manifest CSV, a folder of manifests, or CBF maps (``.nii``/``.nii.gz``), one
        or a list. ``pooling`` defaults to the encoder's recorded one, ``device`` to CUDA when there is one.
        """
        import torch

        from ichor.evaluation.features import embed_scans  # the data stack, only when embedding

        items = [scans] if isinstance(scans, (str, os.PathLike)) else list(scans)
        pooling = pooling or self.metadata.get("pooling", "brain_mean")
        args: dict[str, Any] = dict(
            batch_size=batch_size,
            pooling=pooling,
            cache_dir=cache_dir,
            num_workers=num_workers,
            on_bad_scan=on_bad_scan,
            device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
            progress=progress,
            loaded=(self.network, self.metadata),
        )
        images = [str(item).endswith(IMAGE_SUFFIXES) for item in items]
        if not any(images):
            return embed_scans(str(self.folder), [str(item) for item in items], **args)
        if not all(images):
            raise ValueError("embed takes manifests or CBF maps (.nii, .nii.gz), not a mix of both")
        with tempfile.TemporaryDirectory() as folder:
            manifest = scan_manifest(items, Path(folder) / "scans.csv")
            return embed_scans(str(self.folder), [str(manifest)], **args)

    def __repr__(self) -> str:
        arch = self.metadata["architecture"]
        return (
            f"Encoder({str(self.folder)!r}: {arch.get('embed_dim')}-wide, {arch.get('depth')} blocks, "
            f"patch {arch.get('patch_size')}, input {tuple(self.metadata['img_size'])})"
        )


def scan_manifest(paths: Sequence[str | os.PathLike], out: Path) -> Path:
    """A one-study manifest of CBF maps: subject = the file name (or its position, when names repeat)."""
    files = [Path(p).resolve() for p in paths]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"CBF map(s) not found: {', '.join(missing)}")
    names = [f.name.removesuffix(".gz").removesuffix(".nii") for f in files]
    subjects = names if len(set(names)) == len(names) else [f"scan{i + 1:04d}" for i in range(len(files))]
    pd.DataFrame({"subject": subjects, "study": "scans", "path": [str(f) for f in files]}).to_csv(out, index=False)
    return out
