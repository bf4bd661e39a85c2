"""From the subject's brain to a delivered map: output grid, head pose, resampling and noise.

Native-space maps sit in scanner coordinates (the brain is wherever the head was, tilted
by a few degrees) on the protocol's own grid and orientation; MNI-space maps sit on
ExploreASL's 1.5 mm 121 x 145 x 121 grid with a small residual misregistration.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ichor.synth.anatomy import Anatomy
from ichor.synth.protocols import MNI_SPACE, Protocol

MNI_SHAPE = (121, 145, 121)
MNI_ORIGIN = np.array([-90.0, -126.0, -72.0])  # world position of voxel (0, 0, 0) in RAS, ExploreASL/SPM 1.5 mm
BRAIN_CENTRE_MNI = np.array([0.0, -18.0, 12.0])  # rotation centre of head motion
ISOCENTRE_OFFSET = np.array([1.0, 16.0, 20.0])  # where a head's brain centre sits in scanner coordinates (mm)

_AXIS_DIRECTIONS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def rotation(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """3x3 rotation about x (pitch), y (roll), z (yaw), applied in that order."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oriented_affine(
    orientation: str,
    voxel_mm: tuple[float, float, float],
    shape: tuple[int, int, int],
    centre: np.ndarray,
    tilt_deg: float = 0.0,
) -> np.ndarray:
    """Affine of a grid whose voxel axes point along ``orientation`` (e.g. "LPS"), centred on ``centre``."""
    axes = np.zeros((3, 3))
    for column, (code, size) in enumerate(zip(orientation, voxel_mm)):
        row, sign = _AXIS_DIRECTIONS[code]
        axes[row, column] = sign * size
    axes = rotation((tilt_deg, 0.0, 0.0)) @ axes
    affine = np.eye(4)
    affine[:3, :3] = axes
    affine[:3, 3] = centre - axes @ ((np.array(shape) - 1) / 2)
    return affine


def output_grid(protocol: Protocol, fov_centre: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) of the delivered map: the MNI 1.5 mm grid, or the protocol's native grid around ``fov_centre``."""
    if protocol.space == MNI_SPACE:
        mni_centre = MNI_ORIGIN + 1.5 * (np.array(MNI_SHAPE) - 1) / 2
        return MNI_SHAPE, oriented_affine(protocol.orientation, protocol.out_voxel_mm, MNI_SHAPE, mni_centre)
    return protocol.matrix, oriented_affine(
        protocol.orientation, protocol.out_voxel_mm, protocol.matrix, fov_centre, protocol.oblique_deg
    )


def head_pose(
    rotation_deg: tuple[float, float, float],
    translation_mm: tuple[float, float, float],
    scale: float,
    isocentre: np.ndarray,
) -> np.ndarray:
    """4x4 map from the subject's brain (MNI mm) to world mm: size, rotation about the brain centre, shift."""
    pose = np.eye(4)
    linear = rotation(rotation_deg) * scale
    pose[:3, :3] = linear
    pose[:3, 3] = BRAIN_CENTRE_MNI + isocentre + np.asarray(translation_mm) - linear @ BRAIN_CENTRE_MNI
    return pose


class Sampler:
    """Samples base-grid volumes at the voxels of an output grid, through the head pose (trilinear).

    Only the box of output voxels that can contain brain is interpolated; the rest is 0.
    Interpolation runs through torch's ``grid_sample``: all channels share one pass over
    the coordinates, several times faster than scipy per channel.
    """

    def __init__(self, anatomy: Anatomy, pose: np.ndarray, out_shape: tuple[int, int, int], out_affine: np.ndarray):
        self.out_shape = out_shape
        self.in_shape = anatomy.shape
        # output voxel -> world -> brain (MNI) -> base voxel
        self.transform = np.linalg.inv(anatomy.affine) @ np.linalg.inv(pose) @ out_affine
        inside = np.argwhere(anatomy.brain > 0.01)
        lo, hi = inside.min(axis=0) - 2, inside.max(axis=0) + 2
        corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        in_output = (np.linalg.inv(self.transform) @ corners.T)[:3].T
        start = np.clip(np.floor(in_output.min(axis=0)).astype(int) - 1, 0, out_shape)
        stop = np.clip(np.ceil(in_output.max(axis=0)).astype(int) + 2, 0, out_shape)
        self.box = tuple(slice(a, b) for a, b in zip(start, stop))
        self.box_shape = tuple(int(b - a) for a, b in zip(start, stop))
        self.start = start

    def _grid(self) -> torch.Tensor:
        """``grid_sample``'s grid: each box voxel's base-grid position in [-1, 1] units, (x, y, z) = axes (2, 1, 0)."""
        to_unit = 2 / (np.array(self.in_shape, float) - 1)
        linear = self.transform[:3, :3] * to_unit[:, None]
        shift = (self.transform[:3, :3] @ self.start + self.transform[:3, 3]) * to_unit - 1
        steps = [np.arange(n, dtype=np.float32) for n in self.box_shape]
        grid = np.empty((3, *self.box_shape), np.float32)
        for axis in range(3):
            along = [np.float32(linear[axis, j]) * steps[j] for j in range(3)]
            np.add.outer(np.add.outer(along[0] + np.float32(shift[axis]), along[1]), along[2], out=grid[2 - axis])
        return torch.from_numpy(np.moveaxis(grid, 0, -1))[None]

    def __call__(self, *volumes: np.ndarray) -> list[np.ndarray]:
        """The volumes resampled onto the output grid (0 outside the box and outside the base grid)."""
        outs = [np.zeros(self.out_shape, np.float32) for _ in volumes]
        if min(self.box_shape) > 1:
            stack = torch.from_numpy(np.stack(volumes).astype(np.float32, copy=False))[None]
            sampled = F.grid_sample(stack, self._grid(), mode="bilinear", padding_mode="zeros", align_corners=True)[
                0
            ].numpy()
            for out, channel in zip(outs, sampled):
                out[self.box] = channel
        return outs
