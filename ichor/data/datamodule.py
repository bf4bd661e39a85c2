"""CBFDataModule: per-study manifests in, batches of harmonised CBF maps out.

``prepare_data`` (rank 0) harmonises every scan once into the cache; ``setup`` (every rank)
finds the cached arrays, applies the bad-scan policy, splits subjects and writes the split
table; the dataloaders read memory-mapped float16 arrays (or, with ``in_memory``, index one
resident tensor). Training batches are normalized and augmented where it costs least: on a GPU
after transfer (``on_after_batch_transfer``: the workers hand over float16 values, and the GPU
does in microseconds what costs a CPU worker milliseconds per scan), on a CPU in the loader
workers, in parallel with training (``transforms_on``). Either way a batch's augmentation is
drawn from a generator seeded by (seed, epoch, its scans), so both places give the same batch
and a resumed run draws exactly what an uninterrupted one would. The other splits are
normalized in the workers, so that their loaders serve ready batches to any caller.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, get_worker_info

from ichor.data.augment import Augmentation
from ichor.data.cache import CacheEntry, ScanCache, read_cached
from ichor.data.coverage import Coverage
from ichor.data.harmonise import HarmonisationSettings
from ichor.data.in_memory import ShardShuffle, ThreadPrefetch, epoch_seed, load_resident, shard
from ichor.data.manifest import read_manifests
from ichor.data.scans import ScanError
from ichor.data.schema import labelled_rows
from ichor.data.splits import (
    SPLITS,
    UNLABELLED,
    UNLISTED,
    assign_splits,
    read_split_file,
    write_splits,
)
from ichor.io import write_csv

log = logging.getLogger(__name__)

Normalization = Literal["none", "scale", "relative", "zscore"]
TransformsOn = Literal["auto", "device", "workers"]
# Key of a raw training batch's extras: the per-scan values that normalisation and augmentation need on the device.
RAW = "raw"
SPLITS_FILE = "splits.csv"
SKIPPED_FILE = "skipped_scans.csv"
# Key of every batch's global CBF scalars (B, 2), named GLOBAL_CBF_NAMES: what a relative or z-scored
# map no longer shows, handed to every probe and head beside the pooled features (docs/domain.md).
GLOBAL_CBF = "global_cbf"
GLOBAL_CBF_NAMES = ("log_brain_mean", "log_brain_std")
# A relative map's clip: CBF from minus twice to four times the brain mean (grey matter is ~1.3x,
# white matter ~0.5x; larger values are vessels and artefacts), as "scale" clips at +-cbf_scale.
RELATIVE_RANGE = (-2.0, 4.0)


def normalize_(
    images: torch.Tensor,
    masks: torch.Tensor,
    mode: Normalization,
    cbf_scale: float,
    brain_mean: torch.Tensor,
    brain_std: torch.Tensor,
) -> torch.Tensor:
    """Raw CBF (B, 1, D, H, W), 0 outside the brain -> model input, in place; the background stays 0.

    ``scale`` divides by a fixed CBF value and clips to [-1, 1] (as asl-qc does): it keeps
    absolute CBF, which carries diagnostic information. ``relative`` divides each scan by its
    brain-mean CBF (``brain_mean``/``brain_std`` per scan, from the cache) and clips to
    ``RELATIVE_RANGE``: site and vendor differences in ASL are mostly global, and the global
    level stays available beside the features as the ``GLOBAL_CBF`` scalars. ``zscore`` also
    divides by each scan's spread inside its brain.
    """
    if mode == "scale":
        return images.mul_(1.0 / cbf_scale).clamp_(-1.0, 1.0)
    shape = (-1,) + (1,) * (images.ndim - 1)
    if mode == "relative":
        return images.div_(brain_mean.clamp_min(1e-6).view(shape)).clamp_(*RELATIVE_RANGE)
    if mode == "zscore":
        images.sub_(brain_mean.view(shape)).div_(brain_std.clamp_min(1e-6).view(shape))
        return images.masked_fill_(~masks, 0.0)
    if mode == "none":
        return images
    raise ValueError(f"normalization must be one of {', '.join(get_args(Normalization))}, got {mode!r}")


class CachedScans(Dataset):
    """Cached harmonised scans with their manifest fields, ready for a model or raw for the device.

    Reads whole batches (``__getitems__``, used by the DataLoader): each float16 array is
    converted straight into one batch tensor (in shared memory inside a worker), so a scan
    is copied once instead of three times; use ``collate_batch`` as the loader's collate_fn.
    ``raw`` batches keep the cached float16 values (NaN outside the brain) and carry what
    ``prepare_`` needs under ``RAW``; ``resident`` (from ``ichor.data.in_memory``) replaces
    file reads by indexing one tensor. Augmented batches draw from ``augmentation_generator``
    with ``seed`` and the epoch the training sampler sets (``set_epoch``), which running
    workers see: it lives in shared memory.
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        entries: Sequence[CacheEntry],
        normalization: Normalization,
        cbf_scale: float,
        augmentation: Augmentation | None = None,
        raw: bool = False,
        resident: torch.Tensor | None = None,
    ) -> None:
        self.entries = list(entries)
        self.normalization, self.cbf_scale, self.augmentation = normalization, cbf_scale, augmentation
        self.raw, self.resident = raw, resident
        self.seed, self.epoch = 0, torch.zeros((), dtype=torch.int64)
        self.fields = {column: _field_values(rows[column]) for column in rows.columns}
        self.brain_mean = torch.tensor([entry.brain_mean for entry in self.entries], dtype=torch.float32)
        self.brain_std = torch.tensor([entry.brain_std for entry in self.entries], dtype=torch.float32)
        self.global_cbf = global_cbf(self.brain_mean, self.brain_std)

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation the next batches draw (shared before a sampler starts the workers)."""
        if not self.epoch.is_shared():
            self.epoch.share_memory_()
        self.epoch.fill_(epoch)

    def __getitem__(self, index: int) -> dict:
        """One scan: image (1, D, H, W), mask, fields."""
        batch = self.__getitems__([index])
        return {key: value[0] for key, value in batch.items() if key != RAW}

    def __getitems__(self, indices: Sequence[int]) -> dict:
        """A batch of per-scan fields and image (B, 1, D, H, W): float32 with a bool mask, or raw float16."""
        rows = torch.as_tensor(indices)
        fields = {column: _gather(values, indices) for column, values in self.fields.items()}
        fields[GLOBAL_CBF] = self.global_cbf[rows]
        images = self._read(indices, torch.float16 if self.raw else torch.float32)
        if self.raw:
            extras = {"brain_mean": self.brain_mean[rows], "brain_std": self.brain_std[rows], "index": list(indices)}
            return {"image": images, RAW: extras, **fields}
        masks = _batch_tensor(tuple(images.shape), torch.bool)
        mean, std = self.brain_mean[rows], self.brain_std[rows]
        generator = None
        if self.augmentation is not None:
            generator = augmentation_generator(self.seed, int(self.epoch), indices, images.device)
        finished = prepare_(images, masks, self.normalization, self.cbf_scale, mean, std, self.augmentation, generator)
        if get_worker_info() is not None and finished[0] is not images:
            # Augmentation returns new tensors: copied back into the shared buffers, they reach the
            # trainer without a second shared segment and copy (a third less worker CPU per scan).
            images.copy_(finished[0])
            masks.copy_(finished[1])
            finished = images, masks
        return {"image": finished[0], "mask": finished[1], **fields}

    def _read(self, indices: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """The cached values of these scans as one (B, 1, D, H, W) tensor of ``dtype``."""
        if self.resident is not None:
            return self.resident[torch.as_tensor(indices, device=self.resident.device)].to(dtype)
        shape = (len(indices), 1, *read_cached(self.entries[indices[0]].array_path).shape)
        images = _batch_tensor(shape, dtype)
        for slot, index in enumerate(indices):  # torch converts float16 faster than numpy
            images[slot, 0].copy_(torch.from_numpy(read_cached(self.entries[index].array_path)))
        return images


def prepare_(
    images: torch.Tensor,
    masks: torch.Tensor,
    normalization: Normalization,
    cbf_scale: float,
    brain_mean: torch.Tensor,
    brain_std: torch.Tensor,
    augmentation: Augmentation | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached values (float32, NaN outside the brain) -> model input and brain mask; ``images`` and ``masks`` in place.

    The one place where a batch is finished, wherever it runs (worker or training device).
    """
    torch.eq(images, images, out=masks)  # brain = not NaN (NaN != NaN), in one pass
    images.nan_to_num_(0.0)
    normalize_(images, masks, normalization, cbf_scale, brain_mean, brain_std)
    if augmentation is None:
        return images, masks
    levels = noise_levels(normalization, cbf_scale, brain_mean, brain_std)
    return augmentation(images, masks, levels, generator, in_place=True)


def global_cbf(brain_mean: torch.Tensor, brain_std: torch.Tensor) -> torch.Tensor:
    """The GLOBAL_CBF scalars (N, 2) of scans with these brain means and spreads (mL/100g/min)."""
    return torch.stack([brain_mean, brain_std], dim=1).clamp_min(1e-3).log()


def noise_levels(
    normalization: Normalization, cbf_scale: float, brain_mean: torch.Tensor, brain_std: torch.Tensor
) -> torch.Tensor:
    """Each scan's brain standard deviation in the units of the normalized image (sets the noise level)."""
    if normalization == "scale":
        return brain_std / cbf_scale
    if normalization == "relative":
        return brain_std / brain_mean.clamp_min(1e-6)
    return torch.ones_like(brain_std) if normalization == "zscore" else brain_std


def resolve_transforms_on(
    transforms_on: TransformsOn, device: torch.device | None, processes: int = 1
) -> Literal["device", "workers"]:
    """Where training batches are finished, for a run training on ``device`` (None: no trainer) in ``processes``.

    ``auto`` is "workers" on a single CPU process: there the loader workers augment in parallel
    with training, which beats finishing each batch in the one training process. On a GPU,
    without a trainer (the caller finishes raw batches) and under DDP it is "device". The
    workers follow the epoch through ichor's training sampler, which DDP replaces: "workers"
    under DDP is refused rather than repeating one epoch's augmentation.
    """
    if transforms_on == "workers" and processes > 1:
        raise ValueError(
            f"transforms_on: workers needs one training process (this run has {processes}): under DDP the "
            "workers cannot follow the epoch; use 'device' or 'auto'"
        )
    if transforms_on != "auto":
        return transforms_on
    return "workers" if device is not None and device.type == "cpu" and processes == 1 else "device"


def augmentation_generator(seed: int, epoch: int, indices: Sequence[int], device: torch.device) -> torch.Generator:
    """The generator that augments one training batch: a function of (seed, epoch, the batch's scans).

    Wherever the batch is finished (a loader worker or the training device), a resumed run,
    a rerun and every DDP rank draw exactly what an uninterrupted run would, with no state to save.
    """
    key = np.random.SeedSequence([seed, epoch, *indices]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(key >> 1))


def collate_batch(batch: dict) -> dict:
    """collate_fn for CachedScans: ``__getitems__`` already returns a batch."""
    return batch


class EpochShuffle(RandomSampler):
    """A shuffle that is a function of (seed, epoch): a resumed run sees the same order.

    Lightning calls ``set_epoch`` at every epoch start; under DDP it replaces this sampler
    (a RandomSampler) with a DistributedSampler, which is seeded the same way.
    """

    def __init__(self, data_source: Dataset, seed: int, on_epoch: Callable[[int], None] | None = None) -> None:
        super().__init__(data_source, generator=torch.Generator())
        self.seed, self.on_epoch = seed, on_epoch
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Also tells ``on_epoch`` (the dataset, whose augmentation follows the epoch)."""
        self.generator.manual_seed(epoch_seed(self.seed, epoch))
        if self.on_epoch is not None:
            self.on_epoch(epoch)


class CBFDataModule(LightningDataModule):
    """Harmonised, cached CBF maps from per-study manifests, split by subject."""

    def __init__(
        self,
        manifests: list[str],
        cache_dir: str = ".ichor_cache",
        spacing: float | tuple[float, float, float] = 2.0,
        shape: tuple[int, int, int] = (96, 112, 96),
        normalization: Normalization = "scale",
        cbf_scale: float = 100.0,
        volume: int | Literal["mean"] | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        test_studies: list[str] | None = None,
        test_sites: list[str] | None = None,
        stratify_by: str | None = None,
        target: str | None = None,
        target_values: list | None = None,
        split_file: str | None = None,
        augment: Augmentation | None = Augmentation(),
        transforms_on: TransformsOn = "auto",
        in_memory: Literal["host", "device"] | None = None,
        on_bad_scan: Literal["error", "skip"] = "error",
        log_dir: str | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        drop_last: bool = False,
        progress: bool = True,
    ) -> None:
        """
        Args:
            manifests: per-study manifest CSVs, or folders of them (every ``*.csv`` inside).
            cache_dir: where harmonised scans are cached (one sub-folder per harmonisation settings).
            spacing: output voxel size in mm (one number, or x, y, z).
            shape: output grid (x, y, z) in voxels; a multiple of the model's patch size.
            normalization: "scale" (CBF / cbf_scale, clipped to [-1, 1]), "relative" (CBF / the
                scan's brain mean, clipped to RELATIVE_RANGE), "zscore" (per scan, inside the
                brain) or "none" (mL/100g/min). Every batch also carries the scan's GLOBAL_CBF
                scalars (log brain mean and spread), whatever the normalization.
            cbf_scale: the CBF value (mL/100g/min) that "scale" maps to 1.
            volume: for 4D files: a volume index or "mean"; None refuses 4D series.
            batch_size: scans per batch.
            num_workers: dataloader workers, and processes building the cache.
            seed: seed of the split and of the training shuffle.
            val_fraction: fraction of (non-held-out) subjects for validation.
            test_fraction: fraction of (non-held-out) subjects for test.
            test_studies: studies that go wholly to test.
            test_sites: sites that go wholly to test.
            stratify_by: a label column to stratify the split by (besides study); defaults to ``target``.
            target: the label column of a downstream task: rows without a value (or with one
                outside ``target_values``) are left out of train/val/test, counted in the log
                and in ``data_summary()["unlabelled"]``, and still predicted.
            target_values: the label values to keep (e.g. ``[CN, AD]`` for a binary task).
            split_file: CSV with columns ``subject,split`` (train/val/test) that replaces the
                random split (``ichor cv`` writes one per fold); subjects it does not list are
                left out and counted.
            augment: training augmentation; None turns it off.
            transforms_on: where training batches are normalized and augmented: "device" (the
                training device, after transfer: the loader hands over float16 values, and a
                DataLoader used without a Lightning Trainer yields them raw, to finish with
                ``on_after_batch_transfer``), "workers" (the loader workers, in float32), or
                "auto" (default): "workers" when one process trains on a CPU, "device" otherwise
                (see :func:`resolve_transforms_on`). Both draw the same augmentation.
            in_memory: hold the training split in memory as one float16 tensor ("host" RAM or
                the training "device"), sharded by rank under DDP, instead of reading the cache
                files; refused, with the sizes, when it does not fit. None reads the cache.
            on_bad_scan: "error" raises listing every bad scan; "skip" drops them and writes a report.
            log_dir: where the split table and skip report go (default: the trainer's log dir, else cache_dir).
            pin_memory: pin batches for GPU transfer (default: when CUDA is available).
            persistent_workers: keep dataloader workers between epochs.
            drop_last: drop the last incomplete training batch.
            progress: show a progress bar while building the cache.
        """
        super().__init__()
        self.save_hyperparameters()
        if not manifests:
            raise ValueError("CBFDataModule needs at least one manifest (data.manifests)")
        if normalization not in get_args(Normalization):
            raise ValueError(
                f"normalization must be one of {', '.join(get_args(Normalization))}, got {normalization!r}"
            )
        if transforms_on not in ("auto", "device", "workers"):
            raise ValueError(f"transforms_on must be 'auto', 'device' or 'workers', got {transforms_on!r}")
        if in_memory not in (None, "host", "device"):
            raise ValueError(f"in_memory must be null, 'host' or 'device', got {in_memory!r}")
        if on_bad_scan not in ("error", "skip"):
            raise ValueError(f"on_bad_scan must be 'error' or 'skip', got {on_bad_scan!r}")
        # The object here; plain values in hparams (as LightningCLI saves them), so that a checkpoint
        # of a datamodule made in Python still loads with safe (`weights_only`) loading.
        self.augment = augment
        self.hparams.augment = None if augment is None else dataclasses.asdict(augment)
        self.settings = HarmonisationSettings.create(spacing, shape, volume)
        self.cache = ScanCache(cache_dir, self.settings)
        self.datasets: dict[str, CachedScans] = {}
        self.rows: pd.DataFrame | None = None  # kept scans, with their `split`
        self.skipped: pd.DataFrame | None = None
        self._known_bad: dict[str, str] = {}
        self._resumed_epoch = 0  # from a checkpoint's state_dict (load_state_dict)
        self.partial_coverage = 0  # after setup: scans with partial brain coverage

    # ------------------------------------------------------------------ metadata
    def harmonisation_settings(self) -> dict:
        """What a model trained on these batches expects its input to be (stored with exported encoders)."""
        settings = {
            **self.settings.as_dict(),
            "normalization": self.hparams.normalization,
            "cache_key": self.settings.key(),
        }
        if self.hparams.normalization == "scale":
            settings["cbf_scale"] = self.hparams.cbf_scale
        return settings

    def data_summary(self) -> dict:
        """Scans per study and split, and how many were skipped (after ``setup``)."""
        if self.rows is None:
            raise RuntimeError("data_summary() needs setup() first")
        counts = self.rows.groupby(["study", "split"]).size()
        per_study = {
            study: {split: int(counts.get((study, split), 0)) for split in SPLITS}
            for study in sorted(self.rows["study"].unique())
        }
        return {
            "scans": len(self.rows),
            "subjects": int(self.rows["subject"].nunique()),
            "per_split": {split: int((self.rows["split"] == split).sum()) for split in SPLITS},
            "per_study": per_study,
            "skipped": 0 if self.skipped is None else len(self.skipped),
            "unlabelled": int((self.rows["split"] == UNLABELLED).sum()),
            "unlisted": int((self.rows["split"] == UNLISTED).sum()),
            "partial_coverage": self.partial_coverage,  # scans whose brain is short or cut (ichor.data.coverage)
        }

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Build the cache for every scan (rank 0 only); with on_bad_scan="error", raise on bad scans."""
        rows = read_manifests(self.hparams.manifests, self.cache.content_store)
        problems = self.problem_messages(rows, self.build_cache(rows["path"]))
        if problems and self.hparams.on_bad_scan == "error":
            raise ScanError(_error_message(problems))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        rows = read_manifests(self.hparams.manifests, self.cache.content_store)
        problems = self.problem_messages(rows, self.build_cache(rows["path"]))
        if problems and self.hparams.on_bad_scan == "error":
            raise ScanError(_error_message(problems))
        bad = rows["path"].isin(self._known_bad)
        self.skipped = rows.loc[bad, ["manifest", "row", "path"]].assign(
            reason=rows.loc[bad, "path"].map(self._known_bad)
        )
        rows = rows.loc[~bad].reset_index(drop=True)
        if rows.empty:
            raise ScanError("no usable scans: every row was skipped\n" + "\n".join(f"  {p}" for p in problems))
        rows["split"] = self._assign_splits(rows)
        self.rows = rows
        self._write_audit_files()
        entries = [self.cache.lookup(path) for path in rows["path"]]
        self.partial_coverage = sum(
            1
            for entry in entries
            if entry is not None and entry.coverage and Coverage.from_dict(entry.coverage).partial
        )
        hp = self.hparams
        for split in SPLITS:
            chosen = rows.index[rows["split"] == split]
            if split == "train" and hp.in_memory is not None:
                chosen = chosen[shard(len(chosen), *self._rank_and_world())]
            self.datasets[split] = CachedScans(
                rows.loc[chosen].drop(columns="split"), [entries[i] for i in chosen], hp.normalization, hp.cbf_scale
            )
        train = self.datasets["train"]
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        train.raw = resolve_transforms_on(hp.transforms_on, device, self._rank_and_world()[1]) == "device"
        train.augmentation = None if train.raw else self.augment
        train.seed = hp.seed
        if hp.in_memory is not None and len(train):
            train.resident = load_resident(train.entries, self._resident_device())
        self.datasets["predict"] = CachedScans(rows, entries, hp.normalization, hp.cbf_scale)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Finish a raw training batch on its device: normalize, and augment (``augmentation_generator``).

        Batches that are not raw pass through.
        """
        extras = batch.pop(RAW, None)
        if extras is None:
            return batch
        hp = self.hparams
        images = batch["image"].float()
        masks = torch.empty_like(images, dtype=torch.bool)
        generator = None
        if self.augment is not None:
            epoch = self.trainer.current_epoch if self.trainer is not None else 0
            generator = augmentation_generator(hp.seed, epoch, extras["index"], images.device)
        batch["image"], batch["mask"] = prepare_(
            images,
            masks,
            hp.normalization,
            hp.cbf_scale,
            extras["brain_mean"],
            extras["brain_std"],
            self.augment,
            generator,
        )
        return batch

    def state_dict(self) -> dict:
        """Saved in checkpoints: the epoch the Trainer trains next (``processed`` counts it once its batches are done)."""
        return {"next_epoch": self.trainer.fit_loop.epoch_progress.current.processed} if self.trainer else {}

    def load_state_dict(self, state_dict: dict) -> None:
        """A resumed run's loader starts at the saved epoch: the Trainer asks for it, and its workers start
        drawing batches, before it sets the sampler's epoch (and it does not restart them when resuming)."""
        self._resumed_epoch = int(state_dict.get("next_epoch", 0))

    def train_dataloader(self) -> DataLoader:
        self._check_training_split()
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    # ------------------------------------------------------------------ helpers
    def build_cache(self, paths: pd.Series) -> dict[str, str]:
        """Build missing cache entries; {path: reason} for bad scans (those found earlier in this process are not re-read)."""
        todo = [path for path in paths if path not in self._known_bad]
        self._known_bad.update(self.cache.build(todo, self.hparams.num_workers, self.hparams.progress))
        return {path: self._known_bad[path] for path in paths if path in self._known_bad}

    @staticmethod
    def problem_messages(rows: pd.DataFrame, failures: dict[str, str]) -> list[str]:
        """'<manifest> row <n> (<file>): <what>' for every bad row, in manifest order."""
        bad = rows[rows["path"].isin(failures)]
        return [f"{r.manifest} row {r.row} ({Path(r.path).name}): {failures[r.path]}" for r in bad.itertuples()]

    def _assign_splits(self, rows: pd.DataFrame) -> pd.Series:
        """train/val/test per row; rows left out of the task get ``unlabelled`` or ``unlisted``."""
        hp = self.hparams
        split = pd.Series("", index=rows.index, dtype=object)
        usable = pd.Series(True, index=rows.index)
        if hp.target is not None:
            usable = labelled_rows(rows, hp.target, hp.target_values)
            split[~usable] = UNLABELLED
            if (~usable).any():
                log.warning(
                    "left out %d scan(s) without a usable %r label (still predicted)", int((~usable).sum()), hp.target
                )
        if hp.split_file is not None:
            split[usable] = read_split_file(hp.split_file, rows.loc[usable, "subject"])
        else:
            split[usable] = assign_splits(
                rows.loc[usable],
                hp.val_fraction,
                hp.test_fraction,
                hp.seed,
                hp.test_studies,
                hp.test_sites,
                hp.stratify_by or hp.target,
            )
        unlisted = int((split == UNLISTED).sum())
        if unlisted:
            log.warning("left out %d scan(s) whose subject is not in split_file %s", unlisted, hp.split_file)
        return split

    def _write_audit_files(self) -> None:
        """Split table and skip report in the log folder, written by global rank 0 only."""
        trainer = self.trainer
        # `trainer.log_dir` is a collective (a broadcast) under DDP: every rank must ask for it.
        trainer_dir = trainer.log_dir if trainer is not None else None
        if trainer is not None and not trainer.is_global_zero:
            return
        folder = Path(self.hparams.log_dir or trainer_dir or self.hparams.cache_dir)
        write_splits(self.rows, self.rows["split"], folder / SPLITS_FILE)
        if len(self.skipped):
            report = write_csv(self.skipped, folder / SKIPPED_FILE)
            log.warning("skipped %d bad scan(s) (on_bad_scan='skip'); list in %s", len(self.skipped), report)

    def _check_training_split(self) -> None:
        """Refuse a training split that gives no batch (empty, or under one batch with ``drop_last``).

        Refused rather than shrinking ``batch_size``: the batch size sets the learning-rate scaling
        and the optimiser's noise of a recipe, so a silently smaller batch would be another run.
        """
        if self.rows is None:
            return  # _loader says: call setup() first
        hp, (_, world) = self.hparams, self._rank_and_world()
        sizes = {split: int((self.rows["split"] == split).sum()) for split in SPLITS}
        per_rank = math.ceil(sizes["train"] / world)
        if per_rank > 0 and not (hp.drop_last and per_rank < hp.batch_size):
            return
        if per_rank == 0:
            remedy = "add scans, or lower val_fraction/test_fraction"
        else:
            remedy = f"lower data.batch_size to at most {per_rank}, or set data.drop_last: false"
        raise ValueError(
            f"the training split gives no batch: {per_rank} training scan(s)"
            + (f" per rank ({world} ranks)" if world > 1 else "")
            + f" with batch_size {hp.batch_size}{' and drop_last' if hp.drop_last else ''} "
            + f"(scans per split: {', '.join(f'{split} {count}' for split, count in sizes.items())}); {remedy}"
        )

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _resident_device(self) -> torch.device:
        if self.hparams.in_memory == "device" and self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def _loader(self, split: str) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("call setup() before asking for dataloaders")
        hp, dataset = self.hparams, self.datasets[split]
        train, resident = split == "train", dataset.resident
        sampler: Sampler | None = None
        if train:
            sampler = EpochShuffle(dataset, hp.seed, on_epoch=dataset.set_epoch)
            if resident is not None:
                rank, world = self._rank_and_world()
                total = sum(self.rows["split"] == "train")
                sampler = ShardShuffle(len(dataset), total, rank, world, hp.seed, on_epoch=dataset.set_epoch)
            sampler.set_epoch(self._resumed_epoch)
        # A resident split is indexed in this process: a gather costs less than passing batches between processes.
        workers = 0 if resident is not None else hp.num_workers
        pin = torch.cuda.is_available() if hp.pin_memory is None else hp.pin_memory
        host_resident = resident is not None and resident.device.type == "cpu"
        return (ThreadPrefetch if host_resident else DataLoader)(
            dataset,
            batch_size=hp.batch_size,
            sampler=sampler,
            drop_last=train and hp.drop_last,
            num_workers=workers,
            pin_memory=pin and (resident is None or host_resident),
            persistent_workers=workers > 0 and hp.persistent_workers,
            collate_fn=collate_batch,
        )


def _field_values(column: pd.Series) -> torch.Tensor | list[str]:
    """Per-scan values of one manifest column: numbers as a tensor (NaN when missing), text as str."""
    if pd.api.types.is_integer_dtype(column):
        return torch.tensor(column.to_numpy(dtype=np.int64))
    if pd.api.types.is_numeric_dtype(column):
        return torch.tensor(column.to_numpy(dtype=np.float32))
    return ["" if pd.isna(value) else str(value) for value in column]


def _gather(values: torch.Tensor | list[str], indices: Sequence[int]) -> torch.Tensor | list[str]:
    if isinstance(values, torch.Tensor):
        return values[torch.as_tensor(indices)]
    return [values[index] for index in indices]


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker, in shared memory (no copy when sent to the trainer)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


def _error_message(problems: list[str]) -> str:
    count = f"{len(problems)} bad scan" + ("s" if len(problems) != 1 else "")
    return f"{count} (on_bad_scan='error'; fix them, or set on_bad_scan: skip to leave them out):\n" + "\n".join(
        f"  {problem}" for problem in problems
    )
