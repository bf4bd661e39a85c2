"""scans.load_cbf / load_tissue_map: every kind of unusable map is refused with a reason."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from helpers import AFFINE, brain, save  # CBF sphere; NIfTI on 3 x 3 x 4 mm voxels

from ichor.data.scans import CBF_MEDIAN_MAX, CBF_MEDIAN_MIN, ScanError, load_cbf, load_tissue_map


def test_good_map_loads_as_3d_float32_with_its_affine(tmp_path):
    data = brain()
    img = load_cbf(save(tmp_path / "cbf.nii.gz", data.astype(np.float64)))
    assert img.shape == data.shape and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, AFFINE)
    np.testing.assert_allclose(img.get_fdata(), data, rtol=1e-6)


def test_trailing_singleton_volume_is_a_3d_map(tmp_path):
    img = load_cbf(save(tmp_path / "cbf.nii", brain()[..., None]))
    assert img.shape == (16, 16, 16)


def test_4d_series_needs_a_volume_choice(tmp_path):
    series = np.stack([brain(seed=0), brain(seed=1), brain(seed=2)], axis=-1)
    path = save(tmp_path / "cbf.nii.gz", series)
    with pytest.raises(ScanError, match=r"4D series with 3 volumes.*\"mean\""):
        load_cbf(path)
    np.testing.assert_allclose(load_cbf(path, volume=1).get_fdata(), series[..., 1], rtol=1e-6)
    np.testing.assert_allclose(load_cbf(path, volume="mean").get_fdata(), series.mean(-1), rtol=1e-5)
    with pytest.raises(ScanError, match="index in 0..2"):
        load_cbf(path, volume=3)


def test_missing_file(tmp_path):
    with pytest.raises(ScanError, match="file not found"):
        load_cbf(tmp_path / "nope.nii.gz")


def test_not_a_nifti(tmp_path):
    path = tmp_path / "cbf.nii.gz"
    path.write_text("subject,path\n")
    with pytest.raises(ScanError, match="cannot read as NIfTI"):
        load_cbf(path)


def test_truncated_gzip_is_corrupt(tmp_path):
    path = save(tmp_path / "cbf.nii.gz", brain(size=32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ScanError, match="corrupt|cannot read"):
        load_cbf(path)


def test_truncated_uncompressed_data_is_corrupt(tmp_path):
    path = save(tmp_path / "cbf.nii", brain())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(ScanError, match="corrupt|cannot read"):
        load_cbf(path)


def test_all_zero_map(tmp_path):
    with pytest.raises(ScanError, match="all voxels are zero"):
        load_cbf(save(tmp_path / "cbf.nii.gz", np.zeros((8, 8, 8), np.float32)))


def test_non_finite_voxels_inside_the_brain_are_counted(tmp_path):
    data = brain()
    data[6:10, 6:10, 6:10] = np.nan  # a hole in the middle of the brain: lost data
    data[8, 8, 10] = np.inf
    with pytest.raises(
        ScanError,
        match=r"^65 non-finite voxels \(NaN/Inf\) inside the brain \(2.3 mL enclosed by brain tissue\): lost data",
    ):
        load_cbf(save(tmp_path / "cbf.nii.gz", data))


def test_a_nan_slice_through_the_brain_is_not_background(tmp_path):
    data = brain()
    data[8] = np.nan  # reaches the edge of the grid, but cuts the brain in two
    with pytest.raises(ScanError, match=r"^1 lost slice\(s\) along x \(index 8\): non-finite"):
        load_cbf(save(tmp_path / "cbf.nii.gz", data))


def test_nan_background_reads_as_zero_and_is_noted(tmp_path):
    """ExploreASL's convention: NaN everywhere outside the brain."""
    data = brain()
    background = data == 0
    data[background] = np.nan
    notes: list[str] = []
    img = load_cbf(save(tmp_path / "cbf.nii.gz", data), notes=notes)
    values = img.get_fdata()
    assert np.isfinite(values).all() and (values[background] == 0).all()
    np.testing.assert_allclose(values[~background], brain()[~background], rtol=1e-6)
    assert notes == [
        f"{int(background.sum())} non-finite voxels outside the brain read as 0 (background, as ExploreASL writes it)"
    ]


@pytest.mark.parametrize("shape", [(16, 16, 3), (2, 16, 16), (16, 1, 16)])
def test_maps_too_thin_to_harmonise_are_refused(tmp_path, shape):
    data = np.full(shape, 50.0, np.float32)
    axis = "xyz"[int(np.argmin(shape))]
    with pytest.raises(ScanError, match=rf"too thin to harmonise: {axis} \({min(shape)}\) voxel\(s\).*at least 4"):
        load_cbf(save(tmp_path / "cbf.nii.gz", data))


def save_with_sform(path, data, sform):
    """Write an image whose header sform is ``sform`` verbatim (nibabel refuses degenerate ones)."""
    save(path, data)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[252:256] = np.array([0, 1], np.int16).tobytes()  # qform_code 0, sform_code 1: affine = sform
    raw[280:328] = np.asarray(sform[:3], np.float32).tobytes()  # srow_x, srow_y, srow_z
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


@pytest.mark.parametrize(
    ("sform", "reason"),
    [
        (np.diag([3.0, 0.0, 4.0, 1.0]), "zero voxel size"),
        (np.array([[3, 3, 0, 0], [0, 0, 0, 0], [0, 0, 4, 0], [0, 0, 0, 1.0]]), "singular"),
        (np.diag([3.0, np.nan, 4.0, 1.0]), "it contains NaN/Inf"),
    ],
)
def test_degenerate_affine(tmp_path, sform, reason):
    path = save_with_sform(tmp_path / "cbf.nii.gz", brain(), sform)
    with pytest.raises(ScanError, match=f"degenerate affine: {reason}"):
        load_cbf(path)


@pytest.mark.parametrize(
    ("scale", "what"),
    [(1 / 100, "mL/g/min"), (1 / 6000, "mL/g/s"), (40.0, "raw signal or T1 intensities")],
)
def test_values_that_cannot_be_cbf_are_refused_with_the_median(tmp_path, scale, what):
    data = brain() * scale
    median = float(np.median(data[data != 0]))
    assert not CBF_MEDIAN_MIN <= median <= CBF_MEDIAN_MAX, what
    with pytest.raises(ScanError, match=f"median of the non-zero voxels is {median:.4g}.*wrong units"):
        load_cbf(save(tmp_path / "cbf.nii.gz", data))


def test_low_but_plausible_cbf_still_loads(tmp_path):
    """A labelling failure (about a fifth of normal CBF) is a bad scan to rate, not a wrong unit."""
    load_cbf(save(tmp_path / "cbf.nii.gz", brain() / 5))


def test_tissue_map_must_be_probabilities_on_the_cbf_grid(tmp_path):
    cbf = load_cbf(save(tmp_path / "cbf.nii.gz", brain()))
    probability = (brain() > 0).astype(np.float32) * 0.8
    assert load_tissue_map(save(tmp_path / "gm.nii.gz", probability), reference=cbf).shape == cbf.shape
    with pytest.raises(ScanError, match="must lie in 0..1"):
        load_tissue_map(save(tmp_path / "pct.nii.gz", probability * 100))
    with pytest.raises(ScanError, match="shape .* differs"):
        load_tissue_map(save(tmp_path / "small.nii.gz", probability[:8]), reference=cbf)
    with pytest.raises(ScanError, match="affine differs"):
        load_tissue_map(save(tmp_path / "moved.nii.gz", probability, np.diag([2.0, 2, 2, 1])), reference=cbf)


@pytest.mark.parametrize("background", [5.0, 0.5], ids=["noise", "weak"])
def test_unmasked_maps_are_refused_as_unmasked(tmp_path, background):
    """Signal outside the head: refused for that reason (a weak background used to read as 'wrong units')."""
    data = brain()
    outside = data == 0
    rng = np.random.default_rng(0)
    data[outside] = background * (1 + rng.random(int(outside.sum())))
    with pytest.raises(ScanError, match=r"^not masked: 100% of the voxels on the edges of the grid are non-zero"):
        load_cbf(save(tmp_path / "cbf.nii.gz", data))


def test_a_slab_cut_through_the_brain_is_masked(tmp_path):
    """A slab's first and last slices are brain; its in-plane edges are still air."""
    data = brain(size=24)[:, :, 6:18]
    assert load_cbf(save(tmp_path / "cbf.nii.gz", data)).shape == (24, 24, 12)


@pytest.mark.parametrize("width", [3, 4])
def test_a_lost_nan_slab_cuts_the_brain(tmp_path, width):
    data = brain(size=32)
    data[14 : 14 + width] = np.nan  # a lost slab through the middle of the brain
    with pytest.raises(ScanError, match=rf"^{width} lost slice\(s\) along x \(index 14, 15, 16"):
        load_cbf(save(tmp_path / "cbf.nii.gz", data))


@pytest.mark.parametrize(
    "dtype", [np.complex64, np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])], ids=["complex", "rgb"]
)
def test_voxels_that_are_not_one_real_value_are_refused(tmp_path, dtype):
    import nibabel as nib

    data = brain().astype(np.complex64) if dtype == np.complex64 else np.zeros((16, 16, 16), dtype=dtype)
    nib.save(nib.Nifti1Image(data, AFFINE), tmp_path / "cbf.nii.gz")
    with pytest.raises(ScanError, match="one real value a voxel"):
        load_cbf(tmp_path / "cbf.nii.gz")


def _with_forms(tmp_path, qform, sform):
    import nibabel as nib

    image = nib.Nifti1Image(brain(), AFFINE)
    image.set_qform(qform, code=0 if qform is None else 1)
    image.set_sform(sform, code=0 if sform is None else 1)
    nib.save(image, tmp_path / "cbf.nii.gz")
    return tmp_path / "cbf.nii.gz"


def _moved(millimetres=0.0, turn=False):
    affine = AFFINE.copy()
    affine[0, 3] += millimetres
    return affine[[1, 0, 2, 3]] if turn else affine


@pytest.mark.parametrize(
    ("qform", "sform", "refused"),
    [
        (AFFINE, AFFINE, None),
        (AFFINE, None, None),  # qform only
        (None, AFFINE, None),  # sform only
        (_moved(1.0), AFFINE, None),  # within a voxel: header rounding, a shear the qform cannot hold
        (_moved(10.0), AFFINE, "qform and sform disagree by up to 10.0 mm"),
        (_moved(turn=True), AFFINE, "qform and sform disagree"),
        (None, None, "no orientation in the header"),
    ],
)
def test_a_header_places_its_voxels_once(tmp_path, qform, sform, refused):
    path = _with_forms(tmp_path, qform, sform)
    if refused is None:
        assert load_cbf(path).shape == (16, 16, 16)
    else:
        with pytest.raises(ScanError, match=refused):
            load_cbf(path)


@pytest.mark.parametrize(("scale", "refused"), [(1.0, False), (0.3, True), (0.1, True), (0.001, True)])
def test_voxel_sizes_that_make_the_brain_too_small_are_refused(tmp_path, scale, refused):
    """The 16^3 sphere on 3 x 3 x 4 mm voxels is 40 mL; written in tenths or metres it is under 5 mL."""
    path = save(tmp_path / "cbf.nii.gz", brain(), affine=np.diag([*(np.diag(AFFINE)[:3] * scale), 1.0]))
    if refused:
        with pytest.raises(ScanError, match=r"less than any human brain's 5 mL: are the header's voxel sizes wrong"):
            load_cbf(path)
    else:
        load_cbf(path)
