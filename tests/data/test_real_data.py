"""The one real CBF map reachable here (OpenNeuro ds000240, ../shared/data): check, harmonise, embed.

A Siemens 3D spiral pCASL map on its native 64 x 57 x 16 grid of 4 x 3.93 x 6 mm voxels, zero
outside the brain, covering only 96 mm of the head (see ../shared/data/ds000240/README.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import REPO

from ichor.cli import main
from ichor.data import CBFDataModule
from ichor.data.cache import read_cached

REAL = REPO.parent / "shared" / "data" / "ds000240" / "sub-01_cbf.nii.gz"


@pytest.fixture(scope="module")
def real_manifest(tmp_path_factory) -> str:
    if not REAL.is_file():
        pytest.skip(f"the real CBF map is not here ({REAL}): ../shared/data lies beside the checkout only")
    folder = tmp_path_factory.mktemp("real")
    manifest = folder / "ds000240.csv"
    manifest.write_text(
        f"subject,session,path,study,vendor,readout,field_strength,pld\n01,,{REAL},ds000240,Siemens,3D spiral,3,1.5\n"
    )
    return str(manifest)


def test_the_real_map_passes_the_check(real_manifest, capsys):
    before = REAL.read_bytes()
    assert main(["manifest", "check", "--quiet", real_manifest]) == 0
    out = capsys.readouterr().out
    assert "no problems in 1 manifest, 1 rows checked" in out
    # 96 mm of the head: the check says so, and where the field of view ends
    assert "partial coverage: covers about 64% of a brain's height (96 of 150 mm)" in out
    assert "the field of view cuts the brain at inferior, superior" in out
    assert REAL.read_bytes() == before  # inputs are never modified


def test_the_real_map_harmonises_onto_the_demo_grid(real_manifest, tmp_path):
    datamodule = CBFDataModule([real_manifest], cache_dir=str(tmp_path / "cache"), spacing=4.0, shape=(48, 56, 48),
                               num_workers=0, progress=False, val_fraction=0.0, test_fraction=0.0)  # fmt: skip
    assert datamodule.build_cache([str(REAL)]) == {}
    entry = datamodule.cache.lookup(str(REAL))
    assert entry.coverage == {"height_mm": 96.0, "height_fraction": 0.64, "cut": ["inferior", "superior"]}
    values = np.asarray(read_cached(entry.array_path), dtype=np.float32)
    brain = values[np.isfinite(values)]
    assert values.shape == (48, 56, 48)
    assert 30 < np.median(brain) < 50  # the README's median in the brain mask: 39.9 mL/100g/min
    # 96 mm of the head: the brain fills far fewer of the 48 axial slices (4 mm) than a whole-brain map would
    slices = np.flatnonzero(np.isfinite(values).any(axis=(0, 1)))
    assert 15 <= len(slices) <= 30
    datamodule.setup("fit")
    assert datamodule.data_summary()["partial_coverage"] == 1  # what an exported encoder's data summary says


def test_the_real_map_embeds(real_manifest, tmp_path, tiny_encoder):
    out = tmp_path / "features.csv"
    args = ["embed", "--encoder", str(tiny_encoder), "--manifest", real_manifest, "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    table = pd.read_csv(out)
    features = table[[c for c in table.columns if c.startswith("f")]].to_numpy()
    assert table["subject"].tolist() == [1] and np.isfinite(features).all() and features.std() > 0
