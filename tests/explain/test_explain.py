"""``ichor explain``: occlusion maps of a task that learnt the synthetic AD pattern land on that pattern.

The scans are made here from the synthetic generator's own parts (``ichor.synth``: the MNI152
tissue maps and the AD pattern of ``PATTERNS``), at 6 mm so that a tiny task learns in seconds:
CBF = GM * level + WM * level / 3 with a random level per subject (so the global CBF says
nothing), lowered in AD by twice the generator's regional effect (50 % at the pattern's core).
Half the files are stored LPS and every head is shifted, so a map can only land on the pattern
if the inverse harmonisation is right.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import make_encoder, quiet_trainer

from ichor.cli import main

SPACING = 6.0
SHAPE = (32, 40, 32)  # 6 mm grid over the MNI brain; patch 4 -> 24 mm patches
FACTOR = 3  # base grid (2 mm) -> 6 mm
EFFECT = 2.0  # x the generator's REGIONAL_EFFECT: 50 % lower CBF at the pattern's core
REGION = 0.25  # the AD regions: where the pattern's weight is at least this (of 1 at its core)
HARMONISATION = {
    "spacing": [SPACING] * 3,
    "shape": list(SHAPE),
    "volume": None,
    "orientation": "RAS",
    "normalization": "zscore",
}


def block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    pad = [(0, (-n) % factor) for n in data.shape]
    data = np.pad(data, pad)
    shape = [n // factor for n in data.shape]
    return data.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))


def ad_dataset(root: Path, subjects: int, seed: int) -> tuple[Path, dict[str, np.ndarray]]:
    """A manifest of alternating CN/AD scans and, per file, the AD regions on that file's grid."""
    from ichor.synth.anatomy import base_anatomy
    from ichor.synth.physiology import REGIONAL_EFFECT, disease_pattern

    anatomy = base_anatomy()
    gm, wm, pattern = (block_mean(a, FACTOR) for a in (anatomy.gm, anatomy.wm, disease_pattern("AD", 0.0)))
    brain = block_mean(anatomy.brain, FACTOR) > 0.5
    affine = anatomy.affine.copy()
    affine[:3, :3] *= FACTOR
    affine[:3, 3] += (FACTOR - 1) / 2 * np.diag(anatomy.affine)[:3]  # centre of the first block
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS -> LPS: reverse the first two axes
    flip[:2, 3] = np.array(brain.shape[:2]) - 1
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, regions = [], {}
    for i in range(subjects):
        diagnosis = ("CN", "AD")[i % 2]
        level = rng.uniform(45, 75)
        loss = EFFECT * REGIONAL_EFFECT["AD"] * pattern if diagnosis == "AD" else 0.0
        cbf = (gm * level + wm * level / 3) * (1 - loss) * (1 + 0.1 * rng.standard_normal(gm.shape))
        data, region, grid = np.where(brain, cbf, 0).astype(np.float32), pattern >= REGION, affine.copy()
        if i % 4 >= 2:  # stored LPS
            data, region, grid = data[::-1, ::-1].copy(), region[::-1, ::-1], grid @ flip
        grid[:3, 3] += SPACING * rng.integers(-2, 3, 3)  # the head sits elsewhere in every scan
        path = root / f"sub-{seed}x{i:02d}_cbf.nii.gz"
        nib.save(nib.Nifti1Image(data, grid), path)
        regions[str(path)] = region
        rows.append({"subject": f"{seed}x{i:02d}", "study": "ad", "path": path.name, "diagnosis": diagnosis})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest, regions


def train_task(tmp: Path, manifest: Path) -> Path:
    """A linear probe on a tiny random encoder, trained on ``manifest``'s diagnosis; its checkpoint."""

    from ichor.data import CBFDataModule
    from ichor.downstream import DownstreamTask

    encoder = make_encoder(tmp, HARMONISATION, SHAPE, patch_size=4, overrides={"depth": 2})
    data = CBFDataModule(
        [str(manifest)],
        cache_dir=str(tmp / "cache"),
        spacing=SPACING,
        shape=SHAPE,
        normalization="zscore",
        target="diagnosis",
        augment=None,
        num_workers=0,
        batch_size=8,
        val_fraction=0.0,
        test_fraction=0.0,
        progress=False,
        log_dir=str(tmp),
    )
    task = DownstreamTask(
        str(encoder), mode="finetune", layer_decay=1.0, optim={"lr": 2e-3, "warmup_epochs": 0.0}, figures=False
    )
    trainer = quiet_trainer(tmp, max_epochs=30, limit_val_batches=0)
    trainer.fit(task, datamodule=data)
    trainer.save_checkpoint(tmp / "task.ckpt")
    return tmp / "task.ckpt"


@pytest.mark.slow
def test_explain_finds_the_ad_pattern(tmp_path, capsys):
    train_manifest, _ = ad_dataset(tmp_path / "train", subjects=16, seed=1)
    checkpoint = train_task(tmp_path, train_manifest)
    manifest, regions = ad_dataset(tmp_path / "new", subjects=8, seed=2)  # subjects the task never saw
    out = tmp_path / "explain"
    args = ["explain", str(checkpoint), "--manifest", str(manifest), "--out", str(out)]
    args += ["--class", "AD", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(args) == 0
    table = pd.read_csv(out / "explanations.csv")
    assert sorted(table["group"]) == ["AD"] * 4 + ["CN"] * 4  # grouped by the task's label column
    for group in ("AD", "CN"):
        assert (out / "group" / f"{group}_attribution.nii.gz").is_file()
        assert (out / "group" / f"{group}_attribution.png").is_file()
    in_region = in_brain = region_voxels = brain_voxels = 0.0
    for row in table.itertuples():
        source = nib.load(row.path)
        saved = nib.load(out / row.attribution)
        assert saved.shape == source.shape and np.allclose(saved.affine, source.affine)
        if row.group != "AD":
            continue
        values, brain = saved.get_fdata(), np.asarray(source.dataobj) != 0
        positive, region = np.clip(values, 0, None), regions[row.path] & brain
        in_region += positive[region].sum()
        in_brain += positive[brain].sum()
        region_voxels += region.sum()
        brain_voxels += brain.sum()
    share, volume_share = in_region / in_brain, region_voxels / brain_voxels
    with capsys.disabled():
        print(f"AD regions: {share:.1%} of the positive attribution in AD scans, {volume_share:.1%} of the brain")
    assert share > 5 * volume_share  # measured: 47.5 % against 4.0 %

    capsys.readouterr()
    assert main(args) == 1  # a second run refuses to replace the first one's files
    assert "exists" in capsys.readouterr().err


def test_explain_names_what_is_wrong(tmp_path, capsys):
    manifest, _ = ad_dataset(tmp_path / "data", subjects=2, seed=0)
    args = ["explain", str(tmp_path / "missing.ckpt"), "--manifest", str(manifest), "--out", str(tmp_path / "out")]
    assert main(args) == 1
    assert "missing.ckpt: checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
