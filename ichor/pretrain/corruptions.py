"""Models Genesis corruptions (Zhou et al., MedIA 2021) of CBF maps, as batched torch ops.

Shuffling, intensity curves, in- and out-painting, each inside the brain only so that the background
and the brain outline stay as they are (docs/reference/pretraining.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ichor.models.patching import grid_size, patchify, unpatchify


@dataclass(frozen=True)
class GenesisCorruption:
    """Probabilities (``*_p``) and sizes of the corruptions; the defaults are Models Genesis's.

    ``shuffle_block`` is the cell edge in voxels (it must divide the input shape; any divisor of
    the patch size does), ``shuffle_fraction`` the fraction of whole-brain cells shuffled.
    Cube sizes are fractions of the grid per axis.
    """

    shuffle_p: float = 0.5
    shuffle_block: int = 4
    shuffle_fraction: float = 0.5
    nonlinear_p: float = 0.9
    invert_p: float = 0.5
    paint_p: float = 0.9
    outpaint_p: float = 0.8  # of painted scans; the others are in-painted
    max_cubes: int = 5
    inpaint_size: tuple[float, float] = (1 / 6, 1 / 3)
    outpaint_size: tuple[float, float] = (3 / 7, 4 / 7)

    def __post_init__(self) -> None:
        for name in ("shuffle_p", "shuffle_fraction", "nonlinear_p", "invert_p", "paint_p", "outpaint_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"corruption.{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.shuffle_block < 1 or self.max_cubes < 1:
            raise ValueError("corruption.shuffle_block and corruption.max_cubes must be at least 1")
        for name in ("inpaint_size", "outpaint_size"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ValueError(f"corruption.{name} must be (low, high) with 0 < low <= high <= 1, got {(low, high)}")

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Corrupted copies of (B, 1, D, H, W) images with bool brain masks; inputs are not modified."""
        b, device = images.shape[0], images.device

        def coin(probability: float) -> torch.Tensor:
            return torch.rand(b, generator=generator, device=device) < probability

        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            x = local_pixel_shuffling(
                images, masks, coin(self.shuffle_p), self.shuffle_block, self.shuffle_fraction, generator
            )
            x = nonlinear_transformation(x, masks, coin(self.nonlinear_p), coin(self.invert_p), generator)
            painted, outpaint = coin(self.paint_p), coin(self.outpaint_p)
            x = painting(x, masks, painted & ~outpaint, self.max_cubes, self.inpaint_size, generator)
            return painting(x, masks, painted & outpaint, self.max_cubes, self.outpaint_size, generator, outside=True)


def _per_scan(values: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1, 1), to broadcast over a batch of volumes."""
    return values.view(-1, 1, 1, 1, 1)


def brain_range(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) minimum and maximum of each scan's brain voxels."""
    flat, brain = images.flatten(1), masks.flatten(1)
    low = torch.where(brain, flat, float("inf")).amin(1)
    high = torch.where(brain, flat, float("-inf")).amax(1)
    return low, high


def local_pixel_shuffling(
    images: torch.Tensor,
    masks: torch.Tensor,
    apply: torch.Tensor,
    block: int,
    fraction: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Permute the voxels of a random ``fraction`` of the whole-brain ``block``^3 cells of the scans in ``apply``."""
    cells = patchify(images, block)  # (B, cells, block^3)
    whole_brain = patchify(masks.to(images.dtype), block).amin(-1) > 0
    b, n, v = cells.shape
    chosen = whole_brain & apply[:, None] & (torch.rand(b, n, generator=generator, device=images.device) < fraction)
    order = torch.argsort(torch.rand(b, n, v, generator=generator, device=images.device), dim=-1)
    shuffled = torch.where(chosen[..., None], torch.gather(cells, 2, order), cells)
    return unpatchify(shuffled, block, grid_size(images.shape[2:], block), images.shape[1])


def bezier_curves(
    generator: torch.Generator, batch: int, device: torch.device, samples: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random cubic Bezier curves from (0, 0) to (1, 1), monotone in x: (B, samples) x and y values.

    The two inner control points are uniform in the unit square; their x are sorted, which
    makes x(t) non-decreasing so that the curve is a function y(x).
    """
    inner = torch.rand(batch, 2, 2, generator=generator, device=device)  # (B, point, xy)
    inner = torch.stack([inner[..., 0].sort(dim=1).values, inner[..., 1]], dim=-1)
    t = torch.linspace(0, 1, samples, device=device)[None, :, None]
    p1, p2 = inner[:, None, 0], inner[:, None, 1]  # (B, 1, 2)
    curve = 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3  # P0 = 0 drops out, P3 = (1, 1)
    return curve[..., 0].contiguous(), curve[..., 1].contiguous()


def nonlinear_transformation(
    images: torch.Tensor, masks: torch.Tensor, apply: torch.Tensor, invert: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Map each scan in ``apply`` through a random Bezier curve on its brain range [min, max].

    ``invert`` reverses the curve (bright becomes dark), as Models Genesis does half the time.
    """
    b = images.shape[0]
    xs, ys = bezier_curves(generator, b, images.device)
    ys = torch.where(invert[:, None], 1 - ys, ys)
    low, high = brain_range(images, masks)
    span = (high - low).clamp_min(1e-6)
    unit = ((images.flatten(1) - low[:, None]) / span[:, None]).clamp(0, 1).contiguous()
    right = torch.searchsorted(xs, unit).clamp(1, xs.shape[1] - 1)
    x0, x1 = xs.gather(1, right - 1), xs.gather(1, right)
    y0, y1 = ys.gather(1, right - 1), ys.gather(1, right)
    mapped = y0 + (unit - x0) / (x1 - x0).clamp_min(1e-6) * (y1 - y0)
    mapped = (low[:, None] + mapped * span[:, None]).view_as(images)
    return torch.where(masks & _per_scan(apply), mapped.to(images.dtype), images)


def random_cubes(
    images: torch.Tensor, count: int, size: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """(B, 1, D, H, W) bool union of 1 to ``count`` random boxes per scan, edges ``size`` of each axis."""
    b, device = images.shape[0], images.device
    extent = torch.tensor(images.shape[2:], device=device, dtype=torch.float32)
    low, high = size
    edges = (
        (extent * (low + (high - low) * torch.rand(b, count, 3, generator=generator, device=device)))
        .floor()
        .clamp_min(1)
    )
    starts = ((extent - edges + 1) * torch.rand(b, count, 3, generator=generator, device=device)).floor()
    used = torch.arange(count, device=device)[None, :] < torch.randint(
        1, count + 1, (b, 1), generator=generator, device=device
    )
    region = torch.zeros(b, *images.shape[2:], dtype=torch.bool, device=device)
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in images.shape[2:]]
    for k in range(count):
        inside = [
            (axis >= starts[:, k, i, None]) & (axis < (starts[:, k, i] + edges[:, k, i])[:, None])
            for i, axis in enumerate(axes)
        ]
        box = inside[0][:, :, None, None] & inside[1][:, None, :, None] & inside[2][:, None, None, :]
        region |= box & used[:, k, None, None, None]
    return region[:, None]


def painting(
    images: torch.Tensor,
    masks: torch.Tensor,
    apply: torch.Tensor,
    count: int,
    size: tuple[float, float],
    generator: torch.Generator,
    outside: bool = False,
) -> torch.Tensor:
    """For scans in ``apply``, uniform noise over the scan's brain range inside 1 to ``count`` random cubes
    (in-painting) or, with ``outside``, outside them (out-painting). Models Genesis's cube edges are 1/6 to 1/3
    of the grid for in-painting and 3/7 to 4/7 for out-painting."""
    cubes = random_cubes(images, count, size, generator)
    region = ~cubes if outside else cubes
    low, high = brain_range(images, masks)
    noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    noise = _per_scan(low) + noise * _per_scan(high - low)
    return torch.where(region & masks & _per_scan(apply), noise, images)
