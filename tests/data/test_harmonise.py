"""Harmonisation puts maps of any orientation, voxel size and field of view on one brain-centred grid."""

import nibabel as nib
import numpy as np
import pytest

from ichor.data.harmonise import HarmonisationSettings, harmonise

SETTINGS = HarmonisationSettings.create(4.0, (32, 40, 32))
CENTRE = np.array([3.0, -12.0, 9.0])  # brain centre in world mm (RAS)
RADII = np.array([60.0, 75.0, 55.0])


def phantom(
    voxel: tuple[float, float, float],
    shape: tuple[int, int, int],
    orientation: str = "RAS",
    offset=(0.0, 0.0, 0.0),
    value=None,
) -> nib.Nifti1Image:
    """An ellipsoidal 'brain' fixed in world space, sampled on a grid of the given geometry."""
    signs = np.array([1 if axis in "RAS" else -1 for axis in orientation], dtype=float)
    affine = np.diag([*(signs * voxel), 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2) + np.asarray(offset)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    inside = (((xyz - CENTRE) / RADII) ** 2).sum(-1) < 1
    cbf = value(xyz) if value is not None else 20 + 40 * (np.abs(xyz[..., 0] - CENTRE[0]) > 30)
    return nib.Nifti1Image(np.where(inside, cbf, 0).astype(np.float32), affine)


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.argwhere(mask).mean(0) + affine[:3, 3]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_lps_copy_harmonises_to_the_same_array_as_its_ras_original():
    ras = phantom((2.0, 2.0, 2.5), (90, 110, 80))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(ras.shape[:2]) - 1  # new voxel i' is old voxel n-1-i along x and y
    lps = nib.Nifti1Image(np.asarray(ras.dataobj)[::-1, ::-1].copy(), ras.affine @ flip)
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S")

    a, b = harmonise(ras, SETTINGS), harmonise(lps, SETTINGS)
    np.testing.assert_allclose(b.cbf, a.cbf, atol=1e-4)
    np.testing.assert_array_equal(b.mask, a.mask)
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-6)


@pytest.mark.parametrize(
    ("voxel", "shape", "orientation", "offset"),
    [
        ((1.5, 1.5, 1.5), (121, 145, 121), "RAS", (0, 0, 0)),  # ExploreASL-like MNI grid
        ((3.0, 3.0, 4.0), (64, 64, 40), "LPS", (10, -6, 4)),  # 2D EPI-like, other FOV centre
        ((3.75, 3.75, 5.0), (64, 64, 36), "LAS", (-7, 5, -3)),  # GE spiral-like, anisotropic
    ],
)
def test_other_voxel_sizes_orientations_and_fovs_land_on_the_same_grid(voxel, shape, orientation, offset):
    reference = harmonise(phantom((2.0, 2.0, 2.0), (100, 120, 100)), SETTINGS)
    other = harmonise(phantom(voxel, shape, orientation, offset), SETTINGS)

    assert other.cbf.shape == other.mask.shape == SETTINGS.shape
    np.testing.assert_allclose(other.affine[:3, :3], np.diag([4.0, 4.0, 4.0]))  # RAS, output spacing
    # Voxel centres on the same world lattice, and the same brain in the same voxels.
    assert np.allclose(other.affine[:3, 3] % 4.0, reference.affine[:3, 3] % 4.0)
    assert dice(other.mask, reference.mask) > 0.95
    # The brain sits in the middle of the array and where it is in the world (affine kept right).
    middle = (np.array(SETTINGS.shape) - 1) / 2
    assert np.all(np.abs(np.argwhere(other.mask).mean(0) - middle) <= 1.0)
    assert np.all(np.abs(world_centroid(other.mask, other.affine) - CENTRE) < 2.0)


def test_edge_is_not_diluted_and_negative_voxels_stay_brain():
    """Normalised interpolation: a constant brain stays constant up to its edge; the mask does not grow."""
    checker = lambda xyz: np.where((np.floor(xyz[..., 0] / 6) + np.floor(xyz[..., 1] / 6)) % 2 == 0, 50.0, -5.0)  # noqa: E731
    scan = harmonise(
        phantom((1.5, 1.5, 1.5), (121, 145, 121), value=lambda xyz: np.full(xyz.shape[:3], 50.0)), SETTINGS
    )
    assert np.allclose(scan.cbf[scan.mask], 50.0, atol=1e-3)  # plain linear interpolation would fade the edge
    assert np.all(scan.cbf[~scan.mask] == 0)
    true_volume = 4 / 3 * np.pi * RADII.prod() / 4.0**3
    assert abs(scan.mask.sum() / true_volume - 1) < 0.05  # 'non-zero after resampling' would be ~+25 %

    negative = harmonise(phantom((2.0, 2.0, 2.0), (100, 120, 100), value=checker), SETTINGS)
    assert dice(negative.mask, scan.mask) > 0.97  # negative CBF voxels are brain, not holes
    assert negative.cbf[negative.mask].min() < 0
