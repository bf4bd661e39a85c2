"""The brain's support as derivatives draw it: masks of any shape are background; lost data and unmasked maps are refused.

Realistic maps come from ``ichor.synth`` (a native 64 x 64 x 32 grid and ExploreASL's MNI 1.5 mm
121 x 145 x 121 grid, with their GM/WM maps); the toy sphere of ``helpers.brain`` serves the shapes.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import brain, save
from scipy import ndimage

from ichor.data.coverage import brain_coverage
from ichor.data.scans import ScanError, load_cbf
from ichor.data.support import MAX_BRAIN_LITRES
from ichor.synth import generate_dataset

MNI_1P5MM = np.array([[-1.5, 0, 0, 90], [0, 1.5, 0, -126], [0, 0, 1.5, -72], [0, 0, 0, 1]])  # ExploreASL's grid


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> list[dict]:
    """Two native and two MNI synthetic scans: CBF, GM and WM arrays and the affine."""
    root = tmp_path_factory.mktemp("synth")
    found = []
    for manifest in generate_dataset(root, n_studies=2, subjects_per_study=2, seed=3, progress=False):
        for row in pd.read_csv(manifest).itertuples():
            image = nib.load(Path(manifest).parent / row.path)
            maps = {
                name: np.asarray(nib.load(Path(manifest).parent / getattr(row, name)).dataobj) for name in ("gm", "wm")
            }
            cbf = np.asarray(image.dataobj, dtype=np.float32)
            found.append({"cbf": cbf, **maps, "affine": image.affine, "space": row.space})
    assert {scan["cbf"].shape for scan in found} == {(64, 64, 32), (121, 145, 121)}
    return found


SCANS = range(4)


def circle(shape: tuple[int, ...]) -> np.ndarray:
    """The in-plane disc inscribed in the grid, through every slice: a circular field of view."""
    centred = (np.indices(shape[:2]) - (np.array(shape[:2])[:, None, None] - 1) / 2) / (
        np.array(shape[:2])[:, None, None] / 2
    )
    return np.broadcast_to((np.sqrt((centred**2).sum(0)) <= 1)[..., None], shape)


def axial_axis(affine: np.ndarray) -> int:
    return int(np.argmax(np.abs(affine[2, :3])))


# ---------------------------------------------------------------- masks of any shape are background


@pytest.mark.parametrize("index", SCANS)
@pytest.mark.parametrize("mask", ["brain", "grey + white matter", "grey matter"])
def test_nan_masked_maps_load_with_their_values(tmp_path, scans, index, mask):
    """NaN outside the brain, in ventricles and sulci (GM + WM mask), or in the white matter too (GM mask)."""
    scan = scans[index]
    cbf, tissue = scan["cbf"], {"brain": 1.0, "grey + white matter": scan["gm"] + scan["wm"], "grey matter": scan["gm"]}
    kept = (cbf != 0) & (np.asarray(tissue[mask]) > 0.5)
    notes: list[str] = []
    img = load_cbf(save(tmp_path / "cbf.nii.gz", np.where(kept, cbf, np.nan), scan["affine"]), notes=notes)
    values = img.get_fdata()
    np.testing.assert_allclose(values[kept], cbf[kept], rtol=1e-6)
    assert (values[~kept] == 0).all()
    assert notes[0].endswith("non-finite voxels outside the brain read as 0 (background, as ExploreASL writes it)")
    assert all("enclosed by brain tissue) read as 0: CSF left out by the map's mask" in note for note in notes[1:])


@pytest.mark.parametrize("width", [1, 2])
@pytest.mark.parametrize("fill", [np.nan, 0.0])
def test_notches_of_the_outline_are_background(tmp_path, width, fill):
    """Slits cut into the brain from outside (a mask's notches) stay outside: nothing inside them is 'lost data'."""
    data = brain(size=32)
    data[data == 0] = fill
    data[10:22, 15 : 15 + width, 20:] = fill  # a slit from the top of the brain down to its middle
    data[20:, 8:24, 12 : 12 + width] = fill  # another from the side
    kept = np.isfinite(data) & (data != 0)
    img = load_cbf(save(tmp_path / "cbf.nii.gz", data))
    np.testing.assert_allclose(img.get_fdata()[kept], data[kept], rtol=1e-6)


def test_nan_notches_in_a_zero_masked_map_are_background(tmp_path):
    """NaN that reaches the outside through the background (a notch) is background even where the map writes 0."""
    data = brain(size=32)
    data[10:22, 15, 20:] = np.nan
    notes: list[str] = []
    img = load_cbf(save(tmp_path / "cbf.nii.gz", data), notes=notes)
    assert notes == ["144 non-finite voxels outside the brain read as 0 (background, as ExploreASL writes it)"]
    assert (img.get_fdata()[10:22, 15, 20:] == 0).all()


# ---------------------------------------------------------------- NaN enclosed by tissue


def test_a_small_nan_pocket_in_a_nan_masked_map_is_noted_as_enclosed(tmp_path):
    """Like a ventricle left out by a GM + WM mask: read as 0, and the note says it was enclosed by tissue."""
    data = brain(size=32)
    data[data == 0] = np.nan
    data[14:18, 14:18, 14:18] = np.nan
    notes: list[str] = []
    load_cbf(save(tmp_path / "cbf.nii.gz", data), notes=notes)
    assert notes[1] == (
        "64 non-finite voxels (NaN/Inf) inside the brain (2.3 mL enclosed by brain tissue) read as 0: "
        "CSF left out by the map's mask (e.g. the ventricles of a grey + white matter mask)"
    )


@pytest.mark.parametrize("radius", [7, 9])
def test_a_hole_larger_than_ventricles_is_lost_data(tmp_path, radius):
    data = brain(size=32)
    data[data == 0] = np.nan
    grid = np.indices(data.shape) - 15.5
    data[np.sqrt((grid**2).sum(0)) < radius] = np.nan
    with pytest.raises(
        ScanError, match=r"enclosed by brain tissue\): lost data, not background \(one hole holds \d+% of"
    ):
        load_cbf(save(tmp_path / "cbf.nii.gz", data))


@pytest.mark.parametrize("where", [(slice(14, 18),) * 3, (slice(8, 10), slice(12, 20), slice(15, 16))])
def test_nan_inside_a_zero_masked_map_is_lost_data(tmp_path, where):
    """A map that writes 0 outside the brain has no NaN mask: NaN enclosed by its tissue is lost data, however small."""
    data = brain(size=32)
    data[where] = np.nan
    with pytest.raises(ScanError, match=r"enclosed by brain tissue\): lost data.*writes 0, not NaN, outside the brain"):
        load_cbf(save(tmp_path / "cbf.nii.gz", data))


# ---------------------------------------------------------------- lost slices


@pytest.mark.parametrize("index", SCANS)
@pytest.mark.parametrize("fill", [np.nan, 0.0])
def test_every_other_slice_empty_is_refused(tmp_path, scans, index, fill):
    scan = scans[index]
    axis = axial_axis(scan["affine"])
    data = np.moveaxis(scan["cbf"].copy(), axis, 0)
    first, last = np.flatnonzero(data.any(axis=(1, 2)))[[0, -1]]
    data[first + 1 : last : 2] = fill
    what = "non-finite" if np.isnan(fill) else "zero"
    with pytest.raises(
        ScanError, match=rf"^\d+ lost slice\(s\) along {'xyz'[axis]} .*: {what}( \(NaN/Inf\))? where brain lies"
    ):
        load_cbf(save(tmp_path / "cbf.nii.gz", np.moveaxis(data, 0, axis), scan["affine"]))


@pytest.mark.parametrize("index", SCANS)
@pytest.mark.parametrize("width", [1, 3])
def test_a_lost_slab_in_a_nan_masked_map_is_refused(tmp_path, scans, index, width):
    """A slab of NaN reaches the grid's edge like the background, but a brain has no gap."""
    scan = scans[index]
    axis = axial_axis(scan["affine"])
    data = np.moveaxis(np.where(scan["cbf"] != 0, scan["cbf"], np.nan), axis, 0)
    middle = int(np.mean(np.flatnonzero(np.isfinite(data).any(axis=(1, 2)))))
    data[middle : middle + width] = np.nan
    with pytest.raises(ScanError, match=rf"^{width} lost slice\(s\) along {'xyz'[axis]} \(index {middle}"):
        load_cbf(save(tmp_path / "cbf.nii.gz", np.moveaxis(data, 0, axis), scan["affine"]))


def test_a_stray_island_outside_the_brain_is_no_lost_slice(tmp_path):
    """Empty slices between the brain and a few stray voxels are not a gap in the brain."""
    data = brain(size=32)
    data[30, 15:17, 15] = 40.0  # beyond the empty slice x = 29
    assert load_cbf(save(tmp_path / "cbf.nii.gz", data)).shape == data.shape


# ---------------------------------------------------------------- unmasked maps


def correlated_noise(shape, sd: float, seed: int = 0) -> np.ndarray:
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, sd, shape), 0.7)
    return (noise * sd / noise.std()).astype(np.float32)


UNMASKED = {
    "rectangular field of view": lambda outside, noise: np.where(outside, noise, 0),
    "circular field of view": lambda outside, noise: np.where(outside & circle(outside.shape), noise, 0),
    "noise clipped at 0": lambda outside, noise: np.where(outside, np.maximum(noise, 0), 0),
    "circular, clipped at 0": lambda outside, noise: np.where(outside & circle(outside.shape), np.maximum(noise, 0), 0),
}


@pytest.mark.parametrize("index", SCANS)
@pytest.mark.parametrize("sd", [5.0, 40.0])
@pytest.mark.parametrize("kind", list(UNMASKED))
def test_unmasked_maps_are_refused_whatever_the_field_of_view(tmp_path, scans, index, sd, kind):
    scan = scans[index]
    cbf = scan["cbf"]
    data = cbf + UNMASKED[kind](cbf == 0, correlated_noise(cbf.shape, sd))
    with pytest.raises(ScanError, match=r"^not masked: .*(edges of the grid|litres, more than a brain)"):
        load_cbf(save(tmp_path / "cbf.nii.gz", data, scan["affine"]))


def test_a_circular_field_of_view_is_refused_for_its_volume(tmp_path, scans):
    """Noise inside a circle spares the grid's edges; the litres it covers give it away."""
    scan = scans[0]
    data = scan["cbf"] + UNMASKED["circular field of view"](scan["cbf"] == 0, correlated_noise(scan["cbf"].shape, 10))
    with pytest.raises(
        ScanError, match=rf"^not masked: its signal covers [3-9]\.\d litres.*{MAX_BRAIN_LITRES:g} L at most"
    ):
        load_cbf(save(tmp_path / "cbf.nii.gz", data, scan["affine"]))


# ---------------------------------------------------------------- integer maps with scaling


@pytest.mark.parametrize(("slope", "inter"), [(0.01, -10.0), (0.03, -7.0), (0.1, 0.02)])
def test_int16_scaled_maps_keep_a_zero_background(tmp_path, scans, slope, inter):
    scan = scans[0]
    cbf = scan["cbf"]
    image = nib.Nifti1Image(np.round((cbf - inter) / slope).astype(np.int16), scan["affine"])
    image.header.set_slope_inter(slope, inter)
    path = tmp_path / "cbf.nii.gz"
    image.to_filename(path)
    stored = np.asarray(nib.load(path).dataobj)[cbf == 0]
    assert (stored != 0).all() and np.abs(stored).max() < slope  # the background reads as rounding, not 0
    values = load_cbf(path).get_fdata()
    assert (values[cbf == 0] == 0).all()
    np.testing.assert_allclose(values[cbf != 0], cbf[cbf != 0], atol=slope)


# ---------------------------------------------------------------- whole brains on the MNI 1.5 mm grid


def test_a_whole_brain_mni_map_is_full_coverage(scans):
    for scan in scans:
        if scan["cbf"].shape == (121, 145, 121):
            coverage = brain_coverage(nib.Nifti1Image(scan["cbf"], scan["affine"]))
            assert not coverage.partial and coverage.cut == (), coverage


def test_the_mni152_brain_mask_on_exploreasls_grid_is_full_coverage():
    """The template's own brain on the 1.5 mm grid: its medulla leaves the box at the bottom, the brain is whole."""
    from nilearn import datasets, image

    mask = image.resample_img(
        datasets.load_mni152_brain_mask(resolution=1), MNI_1P5MM, (121, 145, 121), interpolation="nearest"
    )
    brain_mask = np.asarray(mask.dataobj) > 0
    assert brain_mask[:, :, 0].any()  # it does reach the bottom face
    coverage = brain_coverage(nib.Nifti1Image(np.where(brain_mask, 50.0, 0.0).astype(np.float32), MNI_1P5MM))
    assert coverage.cut == () and not coverage.partial and coverage.height_fraction == 1.0
    top_cut = brain_coverage(nib.Nifti1Image(np.where(brain_mask, 50.0, 0.0)[:, :, :90].astype(np.float32), MNI_1P5MM))
    assert top_cut.cut == ("superior",) and top_cut.partial  # a field of view that ends in the brain still cuts it
