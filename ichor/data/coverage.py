"""How much of a brain a CBF map covers, from the map alone (no registration).

Many ASL protocols acquire a slab: the real ds000240 map covers 96 mm of the head, so its vertex
and cerebellum are missing, not perfused at zero. Two measures, both on the map's own grid:
- ``height_fraction``: the brain's extent along the superior-inferior axis against a whole
  brain's (the MNI152 brain, inferior cerebellum to vertex);
- ``cut``: the sides where the field of view ends inside the brain: the brain's section on that
  face of the grid is at least ``CUT_SECTION`` of its largest section parallel to it. A brain that
  only grazes a face is whole: the medulla leaves the MNI152 box of ExploreASL's 1.5 mm grid
  (121 x 145 x 121) at its bottom face in a section under 1 % of the largest axial one, where a
  slab's end cuts the brain in sections of 10-80 %.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np

# Superior-inferior extent of the MNI152 brain mask that nilearn ships (1 mm), in mm.
TEMPLATE_HEIGHT_MM = 150.0
# A face where the brain's section is at least this fraction of its largest parallel section cuts it.
CUT_SECTION = 0.05
# Below this height fraction, or with a cut side, a map is reported as partial coverage.
LOW_COVERAGE = 0.8
# The two sides of each world (RAS) axis: (negative, positive).
SIDES = (("left", "right"), ("posterior", "anterior"), ("inferior", "superior"))


@dataclass(frozen=True)
class Coverage:
    """How much of a brain a map covers: its height against a whole brain's, and where the field of view cuts it."""

    height_mm: float
    height_fraction: float
    cut: tuple[str, ...]

    @property
    def partial(self) -> bool:
        return bool(self.cut) or self.height_fraction < LOW_COVERAGE

    def describe(self) -> str:
        text = f"covers about {self.height_fraction:.0%} of a brain's height ({self.height_mm:.0f} of {TEMPLATE_HEIGHT_MM:.0f} mm)"
        return text + (f"; the field of view cuts the brain at {', '.join(self.cut)}" if self.cut else "")

    def as_dict(self) -> dict:
        return {**asdict(self), "cut": list(self.cut)}

    @classmethod
    def from_dict(cls, values: dict) -> Coverage:
        return cls(values["height_mm"], values["height_fraction"], tuple(values["cut"]))


def brain_coverage(img: nib.spatialimages.SpatialImage) -> Coverage:
    """Coverage of a loaded CBF map (non-zero voxels are brain)."""
    data = np.asarray(img.dataobj)
    brain = np.isfinite(data) & (data != 0)
    affine = np.asarray(img.affine, dtype=np.float64)
    voxels = np.argwhere(brain)
    if voxels.size == 0:
        return Coverage(0.0, 0.0, ())
    world = voxels @ affine[:3, :3].T + affine[:3, 3]
    # superior-inferior: world z; the extent counts whole voxels, so add one voxel's z size
    voxel_z = float(np.abs(affine[2, :3]).max())
    height = float(world[:, 2].max() - world[:, 2].min()) + voxel_z
    cut = []
    for axis in range(3):
        world_axis = int(np.argmax(np.abs(affine[:3, axis])))
        low_side, high_side = SIDES[world_axis] if affine[world_axis, axis] > 0 else SIDES[world_axis][::-1]
        sections = brain.sum(axis=tuple(other for other in range(3) if other != axis))
        if sections[0] >= CUT_SECTION * sections.max():
            cut.append(low_side)
        if sections[-1] >= CUT_SECTION * sections.max():
            cut.append(high_side)
    order = [side for pair in SIDES for side in pair]
    return Coverage(height, min(1.0, height / TEMPLATE_HEIGHT_MM), tuple(sorted(cut, key=order.index)))
