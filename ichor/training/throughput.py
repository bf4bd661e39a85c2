"""How busy a training run keeps its devices: step timing, data wait, and the peak to compare FLOP/s against.

Why: a GPU that waits for data or for small kernels looks busy to ``nvidia-smi`` and still
trains at a fraction of its speed. Scans/s with the analytic FLOP count of a step give the
achieved TFLOP/s, and against the device's peak the model FLOPs utilisation (MFU); the share
of each step spent waiting for the next batch says whether the data path is the bottleneck.

Times are host wall-clock, taken in the loop's batch hooks without synchronising the device
(that would slow the run it measures): averaged over steps they are exact, one step may
borrow time from its neighbour.
"""

from __future__ import annotations

import os
import time

import torch
from lightning.fabric.utilities.throughput import get_available_flops

# Peak TFLOP/s of one device, set by the user (e.g. a GPU Lightning does not know): wins over the known table.
PEAK_ENV = "ICHOR_PEAK_TFLOPS"


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one device at the trainer's precision: ``ICHOR_PEAK_TFLOPS``, else Lightning's table of known GPUs."""
    if os.environ.get(PEAK_ENV):
        return float(os.environ[PEAK_ENV]) * 1e12
    if device.type != "cuda":
        return None  # CPUs have no meaningful single peak
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16 if "16" in precision else torch.float32
    flops = get_available_flops(device, dtype)
    return None if flops is None else float(flops)


class StepClock:
    """Wall time between the ends of consecutive training steps, and the part of it spent waiting for the batch.

    The wait runs from the end of the previous step's own hooks (``hooks_ended``: its logging is
    the step's, not the data's) to the start of this step: fetching the batch from the loader,
    transferring it and finishing it on the device (``on_after_batch_transfer``).
    """

    def __init__(self) -> None:
        self._last_end: float | None = None
        self._ready = 0.0
        self._start = 0.0

    def restart(self) -> None:
        """Forget the previous step (at an epoch start: the gap since holds validation and checkpointing)."""
        self._last_end = None

    def step_started(self) -> None:
        self._start = time.perf_counter()

    def step_ended(self) -> tuple[float, float] | None:
        """(seconds since the previous step ended, seconds of it waiting for data); None for an epoch's first step."""
        now, last, ready = time.perf_counter(), self._last_end, self._ready
        self._last_end = self._ready = now
        if last is None:
            return None
        return now - last, max(0.0, self._start - ready)

    def hooks_ended(self) -> None:
        """The step's own hooks (its logging) are done: from here the loop waits for the next batch."""
        self._ready = time.perf_counter()
