"""Small data and a tiny exported encoder for the downstream tests (helpers; no tests here).

The scans are 20^3 ellipsoid "brains" at 4 mm whose CBF level depends on the diagnosis, so
that a head has something to learn; the encoder is an untrained mae_vit_micro (patch 8)
exported with the harmonisation settings the data below uses.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from ichor.pretrain import MAEPretrainer
from ichor.models.weights import export_encoder

SHAPE = (16, 16, 16)
SPACING = 4.0
HARMONISATION = {"spacing": [SPACING] * 3, "shape": list(SHAPE), "volume": None, "orientation": "RAS",
                 "normalization": "scale", "cbf_scale": 100.0}
DATA_ARGS = {"spacing": SPACING, "shape": SHAPE, "num_workers": 0, "progress": False, "augment": None,
             "batch_size": 4, "val_fraction": 0.25, "test_fraction": 0.25}
DIAGNOSES = ("CN", "AD")
CBF_LEVEL = {"CN": 60.0, "AD": 42.0}


def brain_map(rng: np.random.Generator, level: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(20) - 9.5] * 3, indexing="ij"))
    inside = ((grid / np.array([7.5, 8.5, 7.0])[:, None, None, None]) ** 2).sum(0) <= 1
    values = level * (1 + 0.15 * rng.standard_normal(inside.shape))
    return np.where(inside, values, 0).astype(np.float32)


def make_dataset(root: Path, studies: int = 2, subjects: int = 6, seed: int = 0) -> list[str]:
    """Per-study manifests (subject, session, study, path, diagnosis, age, rating); returns their paths."""
    rng = np.random.default_rng(seed)
    manifests = []
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    for s in range(1, studies + 1):
        folder = root / f"study-0{s}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(subjects):
            subject, diagnosis = f"S{s}P{i:03d}", DIAGNOSES[i % 2]
            name = f"sub-{subject}_cbf.nii.gz"
            nib.save(nib.Nifti1Image(brain_map(rng, CBF_LEVEL[diagnosis]), affine), folder / name)
            rows.append({"subject": subject, "session": "1", "study": f"study-0{s}", "path": name,
                         "diagnosis": diagnosis, "age": round(float(rng.uniform(55, 85)), 1),
                         "rating": round(float(rng.uniform(1, 4)), 2)})
        path = folder / "manifest.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        manifests.append(str(path))
    return manifests


def make_encoder(root: Path, harmonisation: dict | None = None) -> Path:
    """An exported untrained mae_vit_micro encoder (patch 8) for SHAPE, with ``harmonisation`` metadata."""
    torch.manual_seed(0)
    module = MAEPretrainer(model="mae_vit_micro", img_size=SHAPE, patch_size=8)
    module.data_record = {"harmonisation": harmonisation or HARMONISATION}
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 0,
                  "global_step": 0}
    module.on_save_checkpoint(checkpoint)  # the data and encoder records Lightning's checkpointing adds
    torch.save(checkpoint, root / "pretrain.ckpt")
    return export_encoder(root / "pretrain.ckpt", root / "encoder")
