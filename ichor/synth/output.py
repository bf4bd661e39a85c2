"""Byte-reproducible, atomic file writing for the generator.

Same seed, same bytes: NIfTI files are gzipped here with mtime 0 and no file name in the
gzip header (nibabel's own writer records the name of the file it writes, which would
be a temporary one), JSON has sorted keys, CSV text is formatted by the caller.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from ichor.io import write_bytes, write_text

GZIP_LEVEL = 1  # nibabel's default; the maps are noise-dominated, higher levels gain little


def write_json(path: Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def keep_mantissa_bits(data: np.ndarray, bits: int) -> np.ndarray:
    """Zero all but ``bits`` mantissa bits of float32 values (bit grooming).

    12 bits keep a relative precision of 2.4e-4 (0.015 mL/100g/min at 60), far below the
    noise, and make the maps compress about a third better.
    """
    drop = 23 - bits
    mask = np.uint32((0xFFFFFFFF >> drop) << drop)
    return (np.ascontiguousarray(data, dtype=np.float32).view(np.uint32) & mask).view(np.float32)


def save_nifti_gz(data: np.ndarray, affine: np.ndarray, path: Path, xform_code: int, dtype: type = np.float32) -> None:
    """Save a 3D map as .nii.gz with identical bytes for identical input.

    ``dtype`` uint8 stores a probability map the way SPM stores its segmentations: bytes
    with a scale factor (about 1/255) in the header, so readers get floats in [0, 1] at a
    quarter of the size.
    """
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.set_data_dtype(dtype)
    img.set_qform(affine, code=xform_code)
    img.set_sform(affine, code=xform_code)
    img.header.set_xyzt_units("mm", "sec")
    write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0))
