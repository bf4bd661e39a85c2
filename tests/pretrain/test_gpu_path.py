"""The data path written for GPUs, tested on CPU: augmentation after transfer, the in-memory split, throughput scalars."""

from __future__ import annotations

import itertools
import math
import threading
import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    KillAfter,
    StepLosses,
    assert_resumes_exactly,
    demo_micro_args,
    quiet_trainer,
    small_data_args,
    small_datamodule,
    two_process_ddp,
)
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from scipy.stats import ks_2samp
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ichor.data import Augmentation, CBFDataModule
from ichor.data import in_memory as in_memory_module
from ichor.data.datamodule import resolve_transforms_on
from ichor.data.in_memory import DoesNotFit, ShardShuffle, ThreadPrefetch, prefetched, shard
from ichor.models import Backbone
from ichor.pretrain import MAEPretrainer
from ichor.training.optim import AdamW
from ichor.training.throughput import PEAK_ENV

SMALL = {"spacing": 6.0, "shape": (32, 48, 32), "num_workers": 0, "progress": False, "batch_size": 4}


def datamodule(manifests, cache_dir, **kwargs) -> CBFDataModule:
    options = {**SMALL, "val_fraction": 0.25, "test_fraction": 0.0, "persistent_workers": False, **kwargs}
    dm = CBFDataModule([str(m) for m in manifests], cache_dir=str(cache_dir), **options)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def train_batches(dm: CBFDataModule) -> list[dict]:
    """One epoch of training batches as the model receives them (finished after transfer, here on the CPU)."""
    return [dm.on_after_batch_transfer(batch, 0) for batch in dm.train_dataloader()]


# ------------------------------------------------------------ augmentation on the device


def worker_augmentation_before(augmentation: Augmentation, image, mask, brain_std):
    """The worker-side augmentation this one replaces (ichor/data/augment.py at 36057f4), per scan, as the oracle."""

    def chance(p):
        return p > 0 and float(torch.rand(())) < p

    if chance(augmentation.flip_p):
        image, mask = image.flip(1), mask.flip(1)
    if chance(augmentation.affine_p):
        size = torch.tensor(image.shape[:0:-1], dtype=torch.float32)
        a, b, c = (math.radians(augmentation.rotation_deg) * (2 * float(torch.rand(())) - 1) for _ in range(3))
        rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
        ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
        rz = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
        matrix = rz @ ry @ rx * (1 + augmentation.zoom * (2 * float(torch.rand(())) - 1))
        to_voxels = torch.diag(size / 2)
        theta = torch.zeros(1, 3, 4)
        theta[0, :, :3] = torch.linalg.inv(to_voxels) @ matrix @ to_voxels
        theta[0, :, 3] = augmentation.shift_voxels * (2 * torch.rand(3) - 1) * 2 / size
        stacked = torch.stack([image[0] * mask[0], mask[0].float()])[None]
        grid = F.affine_grid(theta, list(stacked.shape), align_corners=False)
        moved = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        mask = moved[1:2] >= 0.5
        image = torch.where(mask, moved[0:1] / moved[1:2].clamp_min(0.5), torch.zeros(()))
    if chance(augmentation.intensity_p):
        image = image * (1 + augmentation.intensity_range * (2 * torch.rand(()) - 1))
    if chance(augmentation.noise_p):
        image = torch.where(mask, image + augmentation.noise_std * brain_std * torch.randn_like(image), image)
    return image, mask


def summary(images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-scan statistics that each augmentation moves: brain size, position (flip, shift), level, spread (noise)."""
    weights = masks.float()
    count = weights.sum((1, 2, 3, 4))
    left_right = torch.arange(images.shape[2], dtype=torch.float32).view(1, 1, -1, 1, 1)
    mean = (images * weights).sum((1, 2, 3, 4)) / count
    spread = (((images - mean.view(-1, 1, 1, 1, 1)) * weights) ** 2).sum((1, 2, 3, 4)) / count
    return {"voxels": count, "position": (weights * left_right).sum((1, 2, 3, 4)) / count, "mean": mean, "std": spread}


def test_device_augmentation_has_the_worker_augmentation_distribution():
    """Batched draws from a seeded generator match the per-scan worker path, statistic by statistic (KS test)."""
    augmentation = Augmentation(flip_p=0.5, affine_p=0.5, intensity_p=0.5, noise_p=0.5)
    mask = torch.zeros(1, 12, 10, 8, dtype=torch.bool)
    mask[:, 1:7, 2:8, 2:6] = True  # off-centre along left-right, so a flip shows
    image = torch.where(mask, 0.3 + 0.05 * torch.arange(12.0).view(1, -1, 1, 1), 0.0)
    n = 600
    torch.manual_seed(0)
    before = [worker_augmentation_before(augmentation, image, mask, 0.2) for _ in range(n)]
    old = summary(torch.stack([i for i, _ in before]), torch.stack([m for _, m in before]))
    generator = torch.Generator().manual_seed(0)
    batch = image.expand(n, 1, *image.shape[1:]).clone(), mask.expand(n, 1, *mask.shape[1:]).clone()
    new = summary(*augmentation(*batch, torch.full((n,), 0.2), generator))
    for name in old:
        assert ks_2samp(old[name].numpy(), new[name].numpy()).pvalue > 1e-3, name
    assert not torch.equal(old["mean"], new["mean"])  # two draws, not one copied


def test_device_augmentation_is_a_function_of_seed_epoch_and_scans(synthetic_manifests, tmp_path):
    strong = Augmentation(flip_p=0.5, affine_p=0.5, intensity_p=1.0, noise_p=1.0)
    first = train_batches(datamodule(synthetic_manifests, tmp_path / "cache", augment=strong, log_dir=str(tmp_path)))
    again = train_batches(datamodule(synthetic_manifests, tmp_path / "cache", augment=strong, log_dir=str(tmp_path)))
    other = train_batches(
        datamodule(synthetic_manifests, tmp_path / "cache", augment=strong, seed=1, log_dir=str(tmp_path))
    )
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again))
    assert not torch.equal(first[0]["image"], other[0]["image"])
    for batch in first:
        assert batch["image"].dtype == torch.float32 and (batch["image"][~batch["mask"]] == 0).all()


def test_workers_and_device_finish_every_epoch_s_batches_identically(synthetic_manifests, tmp_path):
    """One seeded augmentation wherever a batch is finished: persistent workers follow the sampler's epoch."""
    strong = Augmentation(flip_p=0.5, affine_p=0.5, intensity_p=1.0, noise_p=1.0)
    on_device = datamodule(synthetic_manifests, tmp_path / "cache", augment=strong, transforms_on="device")
    in_workers = datamodule(
        synthetic_manifests,
        tmp_path / "cache",
        augment=strong,
        transforms_on="workers",
        num_workers=2,
        persistent_workers=True,
    )
    device_loader, workers_loader = on_device.train_dataloader(), in_workers.train_dataloader()
    epochs = []
    for epoch in (0, 1):
        device_loader.sampler.set_epoch(epoch)  # as the Trainer does at every epoch start
        workers_loader.sampler.set_epoch(epoch)
        on_device.trainer = SimpleNamespace(current_epoch=epoch)
        expected = [on_device.on_after_batch_transfer(batch, 0) for batch in device_loader]
        received = list(workers_loader)
        assert [b["path"] for b in received] == [b["path"] for b in expected]
        for got, want in zip(received, expected):
            assert torch.equal(got["image"], want["image"]) and torch.equal(got["mask"], want["mask"])
        epochs.append(received)
    assert not torch.equal(epochs[0][0]["image"], epochs[1][0]["image"])  # the second epoch drew anew


@pytest.mark.parametrize("transforms_on", ["device", "workers"])
def test_interrupted_run_with_augmentation_resumes_exactly(tmp_path, synthetic_manifests, transforms_on):
    """With augmentation on (affine included) and loader workers, a run killed after epoch 2 and resumed gives the same next losses."""
    augmentation = Augmentation(affine_p=0.5, noise_p=0.5)

    def run(kill_after=None, ckpt_path=None):
        losses = StepLosses()
        module = MAEPretrainer(
            backbone=Backbone("mae_vit_micro", patch_size=8),
            optim=AdamW(lr=0.1, warmup_epochs=1),
            figure_every_n_steps=0,
        )
        fit = quiet_trainer(
            tmp_path, max_epochs=3, callbacks=[losses] + ([KillAfter(kill_after)] if kill_after else [])
        )
        data = small_datamodule(
            synthetic_manifests,
            tmp_path / "cache",
            **{**SMALL, "val_fraction": 0.25, "num_workers": 2},  # workers start before the resumed epoch is set
            augment=augmentation,
            transforms_on=transforms_on,
            persistent_workers=True,
        )
        fit.fit(module, data, ckpt_path=ckpt_path)
        fit.save_checkpoint(tmp_path / "killed.ckpt")
        return losses.losses

    assert_resumes_exactly(run, tmp_path / "killed.ckpt")


def test_transforms_on_auto_is_the_workers_on_a_cpu_and_the_device_on_a_gpu():
    assert resolve_transforms_on("auto", torch.device("cpu")) == "workers"
    assert resolve_transforms_on("auto", torch.device("cuda", 1)) == "device"
    assert resolve_transforms_on("auto", None) == "device"  # no trainer: raw batches, finished by the caller
    assert resolve_transforms_on("auto", torch.device("cpu"), processes=2) == "device"  # DDP replaces the sampler
    for chosen in ("device", "workers"):
        assert {resolve_transforms_on(chosen, d) for d in (torch.device("cpu"), torch.device("cuda"), None)} == {chosen}
    with pytest.raises(ValueError, match="workers needs one training process"):
        resolve_transforms_on("workers", torch.device("cpu"), processes=2)


def test_auto_on_a_cpu_run_has_its_batches_finished_in_the_workers(synthetic_manifests, tmp_path):
    """``auto``, asked by a CPU trainer: the model receives float32 batches that the loader finished."""
    seen = []

    class Record(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append((batch["image"].dtype, "mask" in batch))

    module = MAEPretrainer(backbone=Backbone("mae_vit_micro", patch_size=8), figure_every_n_steps=0)
    data = CBFDataModule(
        [str(m) for m in synthetic_manifests],
        cache_dir=str(tmp_path / "cache"),
        **{**SMALL, "val_fraction": 0.25, "test_fraction": 0.0},
        transforms_on="auto",
        persistent_workers=False,
    )
    fit = L.Trainer(
        accelerator="cpu",
        fast_dev_run=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
        callbacks=[Record()],
    )
    fit.fit(module, data)
    assert data.hparams.transforms_on == "auto" and not data.datasets["train"].raw
    assert seen == [(torch.float32, True)]


# ------------------------------------------------------------------ in-memory split


def test_prefetched_keeps_order_raises_the_loader_s_error_and_stops_with_its_consumer():
    assert list(prefetched(iter(range(10)), depth=2)) == list(range(10))

    def failing():
        yield from range(3)
        raise ValueError("scan 3 is broken")

    batches = prefetched(failing(), depth=2)
    assert list(itertools.islice(batches, 3)) == [0, 1, 2]
    with pytest.raises(ValueError, match="scan 3 is broken"):
        next(batches)

    endless = prefetched(itertools.count(), depth=2)
    assert [next(endless), next(endless)] == [0, 1]
    endless.close()  # a consumer that stops early (fast_dev_run, a limit on batches)
    deadline = time.monotonic() + 5
    while any(t.name == "ichor-prefetch" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "ichor-prefetch" for t in threading.enumerate())


@pytest.mark.parametrize("transforms_on", ["device", "workers"])
def test_in_memory_split_gives_the_cache_paths_batches(synthetic_manifests, tmp_path, transforms_on):
    cached = datamodule(synthetic_manifests, tmp_path / "cache", augment=None, transforms_on=transforms_on)
    resident = datamodule(
        synthetic_manifests, tmp_path / "cache", augment=None, transforms_on=transforms_on, in_memory="host"
    )
    assert resident.datasets["train"].resident is not None and cached.datasets["train"].resident is None
    assert isinstance(resident.train_dataloader(), ThreadPrefetch)  # readied in a thread, the same batches
    for epoch in (0, 1):
        for dm in (cached, resident):
            dm.train_dataloader().sampler.set_epoch(epoch)  # what Lightning does at each epoch start
        a_batches, b_batches = train_batches(cached), train_batches(resident)
        assert len(a_batches) == len(b_batches) == 3
        for a, b in zip(a_batches, b_batches):
            assert a["path"] == b["path"] and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_in_memory_refuses_what_does_not_fit_naming_the_sizes(synthetic_manifests, tmp_path, monkeypatch):
    monkeypatch.setattr(in_memory_module, "free_memory", lambda device: (10**6, 4 * 10**6))
    with pytest.raises(DoesNotFit) as error:
        datamodule(synthetic_manifests, tmp_path / "cache", in_memory="host")
    message = str(error.value)  # 12 training scans of 32 x 48 x 32 float16 voxels: 98,304 bytes each
    assert "12 scans of 32x48x32 float16 (0.1 MB each) need 1.2 MB on cpu" in message, message
    assert "which has 1.0 MB free of 4.0 MB" in message and "in_memory: null" in message


def test_shards_are_disjoint_cover_the_split_and_have_equal_lengths():
    total, world = 10, 3
    shards = [shard(total, rank, world) for rank in range(world)]
    assert sorted(sum(shards, [])) == list(range(total))
    samplers = [ShardShuffle(len(s), total, rank, world, seed=0) for rank, s in enumerate(shards)]
    assert {len(list(sampler)) for sampler in samplers} == {4}  # ceil(10 / 3): the same number of steps
    for sampler, rows in zip(samplers, shards):
        assert set(sampler) == set(range(len(rows)))  # indices into this rank's own shard
    epoch0 = list(samplers[0])
    samplers[0].set_epoch(1)
    assert list(samplers[0]) != epoch0


@pytest.mark.slow
def test_in_memory_shards_under_two_process_ddp(tmp_path, synthetic_manifests):
    """DDP over 2 CPU processes (gloo), each holding half the training split: both ranks run the same steps."""
    data = [*small_data_args(synthetic_manifests), "--data.init_args.in_memory=host"]
    two_process_ddp(tmp_path, *demo_micro_args(), "--trainer.max_epochs=2", *data)
    last = tmp_path / "runs" / "pretrain_demo" / "version_0" / "checkpoints" / "last.ckpt"
    # Ranks with unequal step counts would hang at the first all-reduce past the shorter epoch.
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] >= 2


# ------------------------------------------------------------------ throughput scalars


def test_throughput_scalars_reach_tensorboard(synthetic_manifests, tmp_path, monkeypatch):
    monkeypatch.setenv(PEAK_ENV, "1.0")  # a CPU has no known peak: the user's
    module = MAEPretrainer(backbone=Backbone("mae_vit_micro", patch_size=8), figure_every_n_steps=0)
    logger = TensorBoardLogger(str(tmp_path / "runs"), name="throughput")
    fit = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    fit.fit(module, datamodule(synthetic_manifests, tmp_path / "cache", log_dir=str(tmp_path)))
    events = EventAccumulator(logger.log_dir).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/scans_per_s", "train/data_wait_fraction", "train/tflops", "train/mfu"} <= tags
    wait = [event.value for event in events.Scalars("train/data_wait_fraction")]
    assert all(0 <= value <= 1 for value in wait)
    tflops = events.Scalars("train/tflops")[-1].value
    assert events.Scalars("train/mfu")[-1].value == pytest.approx(tflops, rel=1e-3)  # peak 1 TFLOP/s


@pytest.mark.slow
def test_compiled_backbone_trains_on_cpu(synthetic_manifests, tmp_path):
    """The `backbone.compile` switch: torch.compile'd networks train a step and give the eager losses."""

    def losses(compile_: bool) -> list[float]:
        recorder = StepLosses()
        module = MAEPretrainer(
            backbone=Backbone("mae_vit_micro", patch_size=8, compile=compile_), figure_every_n_steps=0
        )
        fit = L.Trainer(
            max_steps=2,
            accelerator="cpu",
            logger=False,
            callbacks=[recorder],
            limit_val_batches=0,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        fit.fit(module, datamodule(synthetic_manifests, tmp_path / "cache", augment=None, log_dir=str(tmp_path)))
        return recorder.losses

    assert losses(True) == pytest.approx(losses(False), rel=1e-4)
