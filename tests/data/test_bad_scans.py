"""Bad scans: 'error' lists every bad row in one message; 'skip' drops them, reports them, keeps the rest."""

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ichor.data import CBFDataModule
from ichor.data.manifest import ManifestError
from ichor.data.scans import ScanError
from ichor.synth import generate_dataset

SMALL = {"spacing": 4.0, "shape": (48, 56, 48), "num_workers": 0, "progress": False, "augment": None}


def corrupt(good: nib.Nifti1Image, path: Path) -> None:
    path.write_bytes(b"\x1f\x8b not really gzip " * 20)


def four_d(good, path):
    data = np.asarray(good.dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), good.affine), path)


def all_zero(good, path):
    nib.save(nib.Nifti1Image(np.zeros(good.shape, np.float32), good.affine), path)


def nan_voxels(good, path):
    data = np.asarray(good.dataobj, dtype=np.float32).copy()
    data[data.shape[0] // 2, :, :] = np.nan
    nib.save(nib.Nifti1Image(data, good.affine), path)


def degenerate_affine(good, path):
    """Zero voxel size along x, written through the header (nibabel refuses such an affine)."""
    header = nib.Nifti1Header()
    header.set_data_shape(good.shape)
    header.set_data_dtype(np.float32)
    affine = good.affine.copy()
    affine[:3, 0] = 0
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
    header["sform_code"], header["qform_code"] = 1, 0
    nib.save(nib.Nifti1Image(np.asarray(good.dataobj, dtype=np.float32), None, header=header), path)


def wrong_units(good, path):
    nib.save(nib.Nifti1Image(np.asarray(good.dataobj, dtype=np.float32) / 6000, good.affine), path)  # mL/g/s


def thin(good, path):
    """Two slices of a real map: a slab too thin to resample."""
    data = np.asarray(good.dataobj, dtype=np.float32)
    nib.save(
        nib.Nifti1Image(np.ascontiguousarray(data[:, :, data.shape[2] // 2 : data.shape[2] // 2 + 2]), good.affine),
        path,
    )


def unmasked(good, path):
    """Noise outside the head, as a map saved without its brain mask."""
    data = np.asarray(good.dataobj, dtype=np.float32).copy()
    outside = data == 0
    data[outside] = np.random.default_rng(0).normal(0, 8, int(outside.sum()))
    nib.save(nib.Nifti1Image(data, good.affine), path)


def missing(good, path):
    pass


BAD = {
    corrupt: "cannot read|corrupt",
    four_d: "4D",
    all_zero: "zero",
    nan_voxels: "non-finite",
    degenerate_affine: "degenerate affine",
    wrong_units: "median",
    thin: "too thin",
    unmasked: "not masked",
    missing: "not found",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A good two-study dataset, plus one manifest row per kind of bad file appended to study-02."""
    root = tmp_path_factory.mktemp("synth")
    manifests = [str(p) for p in generate_dataset(root, n_studies=2, subjects_per_study=3, seed=2, progress=False)]
    good_rows = pd.read_csv(manifests[1])
    good = nib.load(Path(manifests[1]).parent / good_rows["path"][0])
    rows = []
    for number, make in enumerate(BAD):
        name = f"bad_{make.__name__}.nii.gz"
        make(good, Path(manifests[1]).parent / name)
        rows.append({"subject": f"BAD{number:02d}", "path": name, "study": good_rows["study"][0]})
    bad_manifest = Path(manifests[1]).with_name("with_bad.csv")
    pd.concat([good_rows, pd.DataFrame(rows)]).to_csv(bad_manifest, index=False)
    first_bad_row = len(good_rows) + 1
    return {
        "manifests": [manifests[0], str(bad_manifest)],
        "first_bad_row": first_bad_row,
        "n_good": sum(len(pd.read_csv(m)) for m in manifests),
        "cache": str(root / "cache"),
    }


def make_datamodule(dataset, tmp_path, **kwargs):
    return CBFDataModule(dataset["manifests"], cache_dir=dataset["cache"], log_dir=str(tmp_path), **{**SMALL, **kwargs})


def test_error_policy_names_every_bad_row_and_file_in_one_message(dataset, tmp_path):
    dm = make_datamodule(dataset, tmp_path)
    with pytest.raises(ScanError) as raised:
        dm.prepare_data()
    message = str(raised.value)
    assert message.startswith(f"{len(BAD)} bad scans")
    for offset, (make, pattern) in enumerate(BAD.items()):
        line = next(line for line in message.splitlines() if f"bad_{make.__name__}.nii.gz" in line)
        assert line.strip().startswith(
            f"{dataset['manifests'][1]} row {dataset['first_bad_row'] + offset} (bad_{make.__name__}.nii.gz): "
        )
        assert pd.Series([line]).str.contains(pattern).all(), line
    with pytest.raises(ScanError):  # setup alone (no prepare_data) applies the same policy
        make_datamodule(dataset, tmp_path).setup("fit")


@pytest.mark.parametrize("make", list(BAD), ids=[make.__name__ for make in BAD])
def test_skip_policy_reports_each_kind_and_keeps_good_rows(dataset, tmp_path, make, caplog):
    dm = make_datamodule(dataset, tmp_path, on_bad_scan="skip")
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
        dm.setup("fit")
    report = pd.read_csv(tmp_path / "skipped_scans.csv")
    assert list(report.columns) == ["manifest", "row", "path", "reason"] and len(report) == len(BAD)
    line = report[report["path"].str.endswith(f"bad_{make.__name__}.nii.gz")].iloc[0]
    assert line["row"] == dataset["first_bad_row"] + list(BAD).index(make)
    assert pd.Series([line["reason"]]).str.contains(BAD[make]).all()
    assert f"skipped {len(BAD)} bad scan" in caplog.text
    assert dm.data_summary()["skipped"] == len(BAD) and dm.data_summary()["scans"] == dataset["n_good"]
    assert not dm.rows["subject"].str.startswith("BAD").any()


def test_four_d_series_is_accepted_when_a_volume_is_chosen(dataset, tmp_path):
    dm = make_datamodule(dataset, tmp_path, on_bad_scan="skip", volume="mean")
    dm.setup("fit")
    assert "BAD01" in set(dm.rows["subject"])  # the 4D file (two copies of a map) averages to a usable map


def test_manifest_errors_raise_even_when_skipping(tmp_path):
    manifest = tmp_path / "broken.csv"
    manifest.write_text("subject,study\nS1,study-01\n")  # no path column
    with pytest.raises(ManifestError, match="broken.csv"):
        CBFDataModule([str(manifest)], cache_dir=str(tmp_path), on_bad_scan="skip", **SMALL).setup("fit")
