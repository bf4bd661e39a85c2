"""Brain coverage from the map alone: height against a whole brain, and the sides where the field of view cuts it."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ichor.data.coverage import TEMPLATE_HEIGHT_MM, brain_coverage


def ellipsoid(shape: tuple[int, int, int], radii: tuple[float, float, float], centre=None) -> np.ndarray:
    """A brain-like ellipsoid of 50 mL/100g/min in a zero background."""
    centre = np.array(centre if centre is not None else [(n - 1) / 2 for n in shape])
    grid = np.indices(shape).reshape(3, -1).T
    inside = (((grid - centre) / np.array(radii)) ** 2).sum(1) <= 1
    return np.where(inside.reshape(shape), 50.0, 0.0).astype(np.float32)


def test_a_whole_brain_inside_the_field_of_view_is_full_coverage():
    # 2 mm voxels; a 150 mm tall brain (radius 37 voxels + the centre voxel) well inside an 80^3 grid
    img = nib.Nifti1Image(ellipsoid((80, 80, 80), (30, 36, 37)), np.diag([2.0, 2.0, 2.0, 1.0]))
    coverage = brain_coverage(img)
    assert coverage.cut == () and not coverage.partial
    assert coverage.height_mm == pytest.approx(150.0, abs=2.0)  # within one voxel
    assert coverage.height_fraction > 0.98


@pytest.mark.parametrize(
    ("flip", "expected"),
    [(False, ("inferior", "superior")), (True, ("inferior", "superior"))],
)
def test_a_slab_is_cut_at_its_ends_whatever_the_voxel_order(flip, expected):
    """16 axial slices of 6 mm through the middle of a brain: cut below and above; LPI order names the same sides."""
    data = ellipsoid((64, 64, 40), (28, 30, 20))[:, :, 12:28]
    affine = np.diag([4.0, 4.0, 6.0, 1.0])
    if flip:  # slices stored superior to inferior
        data, affine = data[:, :, ::-1], affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 15], [0, 0, 0, 1]])
    coverage = brain_coverage(nib.Nifti1Image(np.ascontiguousarray(data), affine))
    assert coverage.cut == expected and coverage.partial
    assert coverage.height_mm == pytest.approx(96.0)
    assert coverage.height_fraction == pytest.approx(96.0 / TEMPLATE_HEIGHT_MM)
    assert coverage.describe().endswith("the field of view cuts the brain at inferior, superior")


def test_a_brain_cut_on_one_side_names_that_side():
    data = ellipsoid((40, 40, 40), (15, 15, 15), centre=(5, 20, 20))  # reaches x = 0: the patient's left in RAS
    assert brain_coverage(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))).cut == ("left",)


def test_a_cut_side_is_named_in_world_terms_when_the_voxel_axis_runs_backwards():
    """Voxel x runs right to left (LAS): the brain reaching voxel x = 0 is cut on the patient's right."""
    data = ellipsoid((40, 40, 40), (15, 15, 15), centre=(5, 20, 20))
    affine = np.diag([-3.0, 3.0, 3.0, 1.0])
    assert brain_coverage(nib.Nifti1Image(data, affine)).cut == ("right",)
