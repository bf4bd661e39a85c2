"""Where a CBF map's brain is, judged from the map's own signal and tissue shape.

A CBF map is zero or undefined outside the brain: ASLPrep writes 0 there, ExploreASL NaN, and
maps masked to grey + white matter (or to grey matter alone) also leave NaN in the ventricles,
the sulci (or the white matter). The map's *support* is its finite non-zero voxels; its
*background* is every other voxel. Rules, in the order they are applied:

1. Unmasked: a map whose signal covers most of its grid's edges, or whose *outline* (the support
   closed over one-voxel gaps, holes filled) is larger than a brain can be (``MAX_BRAIN_LITRES``;
   adults' brains are 1.0-1.8 L, 2 L with their CSF), carries noise or scalp outside the brain,
   whatever the field of view's shape (a rectangle, a circle, noise clipped at 0): refused.
   Measured: masked synthetic brains 1.4-2.2 L, the real ds000240 slab 1.8 L (its mask keeps
   some scalp); the same maps with noise outside the brain 2.9-8.6 L.
2. Lost slices: a brain is one connected organ, so every grid slice between its two ends cuts
   it. Along each voxel axis, a slice whose support is under ``LOST_SLICE_FRACTION`` of the
   fullest slice on *each* side of it (both at least that fraction of the fullest slice of all)
   lost its data, NaN or 0 (a slice dropped in acquisition, every other slice empty, a lost
   slab): refused. Brains dip far less: at the midline, a map masked to grey + white matter keeps
   about 0.6 of the fullest sagittal slice on each side, one masked to grey matter about 0.7.
3. Outside: every background voxel that reaches the edge of the grid through background is
   outside the brain, whatever the outline's notches and sulci: NaN there reads as 0.
4. Pockets: background enclosed by the support (no path of background to the grid's edge).
   Zeros there are CBF values and stay. Non-finite pockets are lost data when the map writes 0
   outside the brain (NaN is then no mask's mark) or when one pocket holds more than
   ``MAX_POCKET_FRACTION`` of the brain (support and pockets; more than the lateral ventricles
   of a severely atrophied brain): refused. Otherwise, in a map that writes NaN outside the
   brain, they are what a grey + white matter mask leaves in the ventricles: read as 0, with
   a note that says they were enclosed by tissue.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# A brain with its CSF (intracranial volume) stays under about 2 L in adults; coarse masks add a
# partial-volume rim. An outline larger than this holds noise or scalp: the map is not masked.
MAX_BRAIN_LITRES = 2.5
# Above this mean fraction of non-zero voxels on the six faces of the grid, a map counts as unmasked.
UNMASKED_EDGE_FRACTION = 0.5
# A slice with less support than this fraction of the fullest slice on each side of it lost its data.
LOST_SLICE_FRACTION = 0.25
# One enclosed non-finite pocket larger than this fraction of the brain is lost data, not ventricles
# (lateral ventricles: a few % of the intracranial volume, up to about 10 % in severe atrophy: an
# estimate; the synthetic GM + WM masks' largest pocket is about 1 % of the brain).
MAX_POCKET_FRACTION = 0.1

AXES = "xyz"


class SupportError(ValueError):
    """A map whose brain support cannot be trusted; the message says why."""


def brain_background_as_zero(data: np.ndarray, voxel_ml: float) -> tuple[np.ndarray, list[str]]:
    """The map with its background (zero or non-finite, outside the brain) as 0, and notes for the user.

    Applies the module's rules in order; raises :class:`SupportError` naming what is wrong.
    ``voxel_ml`` is one voxel's volume in mL (from the affine).
    """
    finite = np.isfinite(data)
    support = finite & (data != 0)
    check_masked(support, voxel_ml)
    check_no_lost_slices(support, finite)
    box = around(support)
    brain = filled(support[box])
    pockets = brain & ~finite[box]
    non_finite = int(np.count_nonzero(~finite))
    outside = non_finite - int(np.count_nonzero(pockets))
    notes = []
    if outside:
        notes.append(f"{outside} non-finite voxels outside the brain read as 0 (background, as ExploreASL writes it)")
    if pockets.any():
        outside_voxels = data.size - int(np.count_nonzero(brain))
        notes.append(judge_pockets(pockets, int(np.count_nonzero(brain)), 2 * outside >= outside_voxels, voxel_ml))
    return np.where(finite, data, 0).astype(data.dtype, copy=False), notes


def around(mask: np.ndarray) -> tuple[slice, ...]:
    """The mask's bounding box grown by one voxel within the grid: all its outline can fill (cheaper than the grid)."""
    found = ndimage.find_objects(mask.astype(np.int8))
    if not found:  # no support: the whole (empty) grid
        return (slice(None),) * mask.ndim
    return tuple(slice(max(0, s.start - 1), min(size, s.stop + 1)) for s, size in zip(found[0], mask.shape))


def filled(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes filled: background (6-connected) with no path to the edge of the array."""
    labels, count = ndimage.label(~mask)
    faces = np.concatenate([labels.take(index, axis=axis).ravel() for axis in range(3) for index in (0, -1)])
    open_to_edge = np.zeros(count + 1, bool)
    open_to_edge[faces] = True
    return mask | ~open_to_edge[labels]


def check_masked(support: np.ndarray, voxel_ml: float) -> None:
    """Refuse maps with signal outside the brain: over the grid's edges, or more of it than a brain holds."""
    faces = [support.take(index, axis=axis) for axis in range(3) for index in (0, support.shape[axis] - 1)]
    edges = float(np.mean([np.count_nonzero(face) / face.size for face in faces]))
    if edges > UNMASKED_EDGE_FRACTION:
        raise SupportError(
            f"not masked: {edges:.0%} of the voxels on the edges of the grid are non-zero (signal outside the head); "
            + _MASK_REMEDY
        )
    litres = np.count_nonzero(signal_outline(support[around(support)])) * voxel_ml / 1000
    if litres > MAX_BRAIN_LITRES:
        raise SupportError(
            f"not masked: its signal covers {litres:.1f} litres, more than a brain ({MAX_BRAIN_LITRES:g} L at most "
            f"with its CSF; adults' brains are 1.0-1.8 L): noise or scalp outside the brain; " + _MASK_REMEDY
        )


_MASK_REMEDY = "set voxels outside the brain to 0 or NaN (e.g. with the brain mask of the pipeline that made the map)"


def signal_outline(support: np.ndarray) -> np.ndarray:
    """The support closed over one-voxel gaps, holes filled: what the signal encloses, speckled noise included."""
    return filled(ndimage.binary_closing(support) | support)


def check_no_lost_slices(support: np.ndarray, finite: np.ndarray) -> None:
    """Refuse a brain with a gap along a voxel axis: slices between brain slices that hold (almost) none of it."""
    for axis in range(3):
        lost = lost_slices(support.sum(axis=tuple(a for a in range(3) if a != axis)))
        if lost.size:
            gone = np.moveaxis(~finite, axis, 0)[lost].any()
            raise SupportError(
                f"{lost.size} lost slice(s) along {AXES[axis]} (index {_listed(lost)}): "
                f"{'non-finite (NaN/Inf)' if gone else 'zero'} where brain lies on both sides; "
                "a brain has no gaps, so data were lost (a dropped slice or slab), not masked"
            )


def _listed(indices: np.ndarray, shown: int = 6) -> str:
    """The first few indices, so that the message stays one short line."""
    return ", ".join(map(str, indices[:shown])) + (", ..." if indices.size > shown else "")


def lost_slices(areas: np.ndarray) -> np.ndarray:
    """Indices of slices whose support ``areas`` fall under ``LOST_SLICE_FRACTION`` of the fullest slice on each side."""
    areas = areas.astype(np.float64)
    before = np.concatenate([[0.0], np.maximum.accumulate(areas)[:-1]])
    after = np.concatenate([np.maximum.accumulate(areas[::-1])[::-1][1:], [0.0]])
    sides = np.minimum(before, after)
    return np.flatnonzero((sides >= LOST_SLICE_FRACTION * areas.max()) & (areas < LOST_SLICE_FRACTION * sides))


def judge_pockets(pockets: np.ndarray, brain_voxels: int, nan_outside: bool, voxel_ml: float) -> str:
    """Non-finite voxels enclosed by the support: the note that reads them as 0, or a SupportError for lost data.

    ``brain_voxels`` counts the support and its holes; ``nan_outside`` says whether the map writes
    NaN (rather than 0) outside the brain.
    """
    count = int(np.count_nonzero(pockets))
    what = f"{count} non-finite voxels (NaN/Inf) inside the brain ({count * voxel_ml:.1f} mL enclosed by brain tissue)"
    if not nan_outside:
        raise SupportError(f"{what}: lost data, not background (this map writes 0, not NaN, outside the brain)")
    labels, _ = ndimage.label(pockets)
    largest = int(np.bincount(labels.ravel())[1:].max())
    if largest > MAX_POCKET_FRACTION * brain_voxels:
        raise SupportError(
            f"{what}: lost data, not background (one hole holds {largest / brain_voxels:.0%} of the brain, "
            f"more than ventricles do, {MAX_POCKET_FRACTION:.0%})"
        )
    return f"{what} read as 0: CSF left out by the map's mask (e.g. the ventricles of a grey + white matter mask)"
