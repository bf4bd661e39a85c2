"""`ichor embed`: one row per scan in manifest order, features computed on the encoder's grid."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import make_dataset, make_encoder

from ichor.cli import main


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("embed")
    return {
        "manifests": make_dataset(root / "data", studies=2, subjects=3),
        "encoder": str(tiny_encoder),
        "cache": str(root / "cache"),
    }


def embed(setting, out, *extra) -> int:
    return main(
        [
            "embed",
            "--encoder",
            setting["encoder"],
            "--manifest",
            *setting["manifests"],
            "--out",
            str(out),
            "--cache-dir",
            setting["cache"],
            "--no-progress",
            *extra,
        ]
    )


def test_every_model_gets_the_same_global_cbf_scalars_as_the_embedding(setting, tmp_path):
    """The benchmark's floor and ceiling read the scalars from the cache the encoders' probes read them from."""
    from ichor.evaluation.features import global_cbf_table
    from ichor.models.weights import load_encoder

    assert embed(setting, tmp_path / "f.csv") == 0
    table = pd.read_csv(tmp_path / "f.csv").set_index("path")
    _, metadata = load_encoder(setting["encoder"])
    scalars = global_cbf_table(metadata["harmonisation"], setting["manifests"], cache_dir=setting["cache"])
    assert sorted(scalars.index) == sorted(table.index)
    np.testing.assert_allclose(scalars.loc[table.index].to_numpy(), table[list(scalars.columns)].to_numpy(), rtol=1e-6)


def test_one_row_per_scan_in_manifest_order(setting, tmp_path):
    assert embed(setting, tmp_path / "f.csv", "--batch-size", "4") == 0
    table = pd.read_csv(tmp_path / "f.csv")
    manifest = pd.concat([pd.read_csv(m) for m in setting["manifests"]], ignore_index=True)
    features = [c for c in table.columns if c.startswith("f")]
    assert list(table.columns[:4]) == ["subject", "session", "study", "path"]
    assert features == [f"f{i:03d}" for i in range(96)] and table.shape == (6, 4 + 2 + 96)
    # the global CBF scalars a relative map no longer shows: log brain mean and spread, in mL/100g/min
    assert list(table.columns[4:6]) == ["log_brain_mean", "log_brain_std"]
    assert (
        np.exp(table["log_brain_mean"]).between(15, 120).all() and np.exp(table["log_brain_std"]).between(1, 80).all()
    )
    assert table["subject"].tolist() == manifest["subject"].tolist()
    assert [p.rsplit("/", 1)[-1] for p in table["path"]] == manifest["path"].tolist()
    assert np.isfinite(table[features].to_numpy()).all()
    # a scan's features do not depend on its batch: batch size 1 gives the same rows
    assert embed(setting, tmp_path / "one.csv", "--batch-size", "1") == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "one.csv")[features], table[features], atol=1e-5)
    # different scans give different features (AD and CN scans differ in CBF level)
    assert np.abs(table.loc[0, features].to_numpy() - table.loc[1, features].to_numpy()).max() > 1e-3
    assert embed(setting, tmp_path / "max.csv", "--pooling", "max") == 0
    assert not np.allclose(pd.read_csv(tmp_path / "max.csv")[features], table[features])


def test_last_blocks_and_region_pooling(setting, tmp_path):
    """--blocks 2 concatenates two blocks; --pooling region keeps the grid's 8 octants side by side."""
    assert embed(setting, tmp_path / "f.csv", "--pooling", "region", "--blocks", "2") == 0
    table = pd.read_csv(tmp_path / "f.csv")
    features = [c for c in table.columns if c.startswith("f")]
    assert features == [f"f{i:04d}" for i in range(8 * 2 * 96)]
    assert np.isfinite(table[features].to_numpy()).all()


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_parquet_without_pyarrow_is_a_clear_error(setting, tmp_path, capsys):
    assert embed(setting, tmp_path / "f.parquet") == 1
    assert "pyarrow" in capsys.readouterr().err and not (tmp_path / "f.parquet").exists()


def test_encoder_without_harmonisation_settings_is_refused(setting, tmp_path, capsys):
    encoder = make_encoder(tmp_path, harmonisation={"orientation": "RAS"})
    assert (
        main(
            [
                "embed",
                "--encoder",
                str(encoder),
                "--manifest",
                *setting["manifests"],
                "--out",
                str(tmp_path / "f.csv"),
                "--no-progress",
            ]
        )
        == 1
    )
    assert "lacks harmonisation ['spacing', 'shape', 'normalization']" in capsys.readouterr().err
    assert json.loads((encoder / "encoder.json").read_text())["harmonisation"] == {"orientation": "RAS"}


def test_outputs_are_new_files_and_never_an_input(setting, tmp_path, capsys):
    out = tmp_path / "f.csv"
    out.write_text("earlier features\n")
    assert embed(setting, out) == 1
    assert f"{out} exists: choose a new file, or pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "earlier features\n"
    manifest = setting["manifests"][0]
    before = Path(manifest).read_text()
    assert embed(setting, manifest, "--overwrite") == 1  # even with --overwrite
    assert "it is an input of this command" in capsys.readouterr().err
    assert Path(manifest).read_text() == before
    assert embed(setting, out, "--overwrite") == 0 and out.read_text().startswith("subject,")


def test_skipped_scans_are_listed_beside_the_output(setting, tmp_path, capsys):
    data = tmp_path / "data"
    manifests = make_dataset(data, studies=1, subjects=3)
    bad = pd.read_csv(manifests[0])["path"].iloc[1]
    (data / "study-01" / bad).write_bytes(b"not a NIfTI")
    out = tmp_path / "out" / "features.csv"
    args = ["embed", "--encoder", setting["encoder"], "--manifest", *manifests, "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--on-bad-scan", "skip"]  # fmt: skip
    assert main(args) == 0
    report = tmp_path / "out" / "features.skipped.csv"
    assert f"listed in {report}" in capsys.readouterr().err
    skipped = pd.read_csv(report)
    assert skipped[["manifest", "row"]].values.tolist() == [[manifests[0], 2]]
    assert "cannot read as NIfTI" in skipped["reason"].iloc[0]
    assert len(pd.read_csv(out)) == 2
