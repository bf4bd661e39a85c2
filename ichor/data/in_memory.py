"""The training split held in memory as one float16 tensor, sharded by rank: a batch is an index, not file reads.

Why: a paper-scale pre-training set (about 23 GB at 2 mm) fits in one GPU's memory, which consumes scans far
faster than workers can read them; under DDP each rank holds its own shard (docs/tutorials/gpu-slurm.md).
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ichor.data.cache import CacheEntry, read_cached

# Of the memory free when the data is loaded, the share it may take: the rest is the model's.
USABLE_FRACTION = 0.8


class DoesNotFit(MemoryError):
    """The scans asked to be held in memory need more than the device has free."""


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the training shuffle of one epoch: the order is a function of (seed, epoch), so a resumed run sees it again."""
    return seed * 100_003 + epoch


def load_resident(entries: Sequence[CacheEntry], device: torch.device) -> torch.Tensor:
    """(N, 1, D, H, W) float16 tensor on ``device`` of the cached arrays (NaN outside the brain); DoesNotFit if too big."""
    shape = read_cached(entries[0].array_path).shape
    check_fits(len(entries), shape, device)
    resident = torch.empty((len(entries), 1, *shape), dtype=torch.float16, device=device)
    for slot, entry in enumerate(entries):
        resident[slot, 0].copy_(torch.from_numpy(read_cached(entry.array_path)))
    return resident


def check_fits(scans: int, shape: Sequence[int], device: torch.device) -> None:
    """Raise DoesNotFit, naming what is needed and what is free, unless the scans fit in USABLE_FRACTION of free memory."""
    per_scan = 2 * math.prod(shape)  # float16
    needed = scans * per_scan
    free, total = free_memory(device)
    if needed > USABLE_FRACTION * free:
        raise DoesNotFit(
            f"in_memory: {scans} scans of {'x'.join(map(str, shape))} float16 ({_gb(per_scan)} each) need "
            f"{_gb(needed)} on {device}, which has {_gb(free)} free of {_gb(total)} (at most "
            f"{USABLE_FRACTION:.0%} of the free memory is used, the rest is left to the model). Use in_memory: host, "
            "more GPUs (under DDP each rank holds 1/world of the scans), or in_memory: null (read the cache)"
        )


def free_memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of the device's memory: the GPU's, or the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)
    page = os.sysconf("SC_PAGE_SIZE")
    return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page


def shard(count: int, rank: int, world: int) -> list[int]:
    """This rank's rows of ``count``: every world-th, from its rank."""
    return list(range(rank, count, world))


class ShardShuffle(DistributedSampler):
    """Shuffles this rank's resident shard per (seed, epoch), padded to the longest shard's length.

    A ``DistributedSampler`` so that Lightning keeps it (it would otherwise replace it by one
    that indexes the whole dataset, which this rank does not hold); padding repeats the
    shard's first scans of the epoch, as ``DistributedSampler`` does, so that every rank runs
    the same number of steps. With one rank the order is ``EpochShuffle``'s.
    """

    def __init__(
        self,
        shard_size: int,
        total: int,
        rank: int,
        world: int,
        seed: int,
        on_epoch: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(range(total), num_replicas=world, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        self.shard_size, self.on_epoch = shard_size, on_epoch

    def set_epoch(self, epoch: int) -> None:
        """Also tells ``on_epoch`` (the dataset, whose augmentation follows the epoch)."""
        super().set_epoch(epoch)
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.shard_size, generator=generator).tolist()
        return iter((order * math.ceil(self.num_samples / self.shard_size))[: self.num_samples])

    def __len__(self) -> int:
        return self.num_samples


class ThreadPrefetch(DataLoader):
    """A loader without workers that readies its next batches in a thread while the caller trains.

    Why: a split held in host memory is indexed in the training process (passing batches between
    processes costs more than the gather: finished by two workers, the demo's MAE pre-training ran
    at 149 scans/s on 2 cores, about 175 on the serial path), and there the gather and finishing
    took 14 % of a small MAE's step; torch releases the GIL in its kernels, so a thread overlaps
    them with the step (172.7 against 175.2 scans/s back to back, data wait 6.8 % against 13.7 %).
    The batches and their order are the loader's own.
    """

    depth = 2  # batches readied ahead

    def __iter__(self) -> Iterator:  # type: ignore[override]  # a generator over the loader's own iterator
        return prefetched(super().__iter__(), self.depth)


def prefetched(batches: Iterator, depth: int) -> Iterator:
    """``batches``, drawn ``depth`` ahead in a thread; its errors are raised here, and it stops when this does."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop, end = threading.Event(), object()

    def offer(entry: tuple) -> bool:
        """Queue ``entry`` unless the consumer has stopped (then False)."""
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        # One torch thread here (a per-thread setting): the step keeps its cores. With a second team of
        # threads, the demo's MAE pre-training on 2 cores ran at 144-149 scans/s instead of about 175.
        torch.set_num_threads(1)
        try:
            for item in batches:
                if not offer((item, None)):
                    return
            offer((end, None))
        except BaseException as error:  # handed to the consumer, which raises it
            offer((end, error))

    thread = threading.Thread(target=fill, name="ichor-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"
