"""MAE pre-training end to end: learning, monitoring, exact resume, DDP, shipped configs."""

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import (
    KillAfter,
    StepLosses,
    assert_resumes_exactly,
    demo_micro_args,
    small_data_args,
    small_datamodule,
    two_process_ddp,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ichor.cli import main
from ichor.data import CBFDataModule
from ichor.models import Backbone
from ichor.models.weights import load_encoder
from ichor.pretrain import MAEPretrainer
from ichor.training.optim import AdamW

SMALL = {"spacing": 6.0, "shape": (32, 48, 32)}


def datamodule(manifests, cache_dir, **kwargs) -> CBFDataModule:
    return small_datamodule(manifests, cache_dir, **{**SMALL, "val_fraction": 0.25, **kwargs})


def trainer(tmp_path, epochs, **kwargs) -> L.Trainer:
    options = dict(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        log_every_n_steps=1,
    )
    options.update(kwargs)
    return L.Trainer(**options)


@pytest.mark.slow
def test_reconstruction_beats_mean_prediction(tmp_path, synthetic_manifests):
    """A short run learns CBF structure: val loss well below predicting each scan's mean."""
    L.seed_everything(0)
    module = MAEPretrainer(
        backbone=Backbone("mae_vit_micro", patch_size=8),
        optim=AdamW(lr=0.1, warmup_epochs=2),
        norm_pix_loss=False,
        figure_every_n_steps=0,
    )
    run = trainer(tmp_path, epochs=25)
    run.fit(module, datamodule(synthetic_manifests, tmp_path / "cache"))
    metrics = run.callback_metrics
    assert metrics["val/loss"] < 0.5 * metrics["val/loss_mean_prediction"], metrics


def test_interrupted_run_resumes_exactly(tmp_path, synthetic_manifests):
    """Killed after epoch 2 and resumed from its checkpoint, a run gives the same next losses."""

    def run(kill_after=None, ckpt_path=None):
        losses = StepLosses()
        callbacks = [losses] + ([KillAfter(kill_after)] if kill_after else [])
        module = MAEPretrainer(
            backbone=Backbone("mae_vit_micro", patch_size=8),
            optim=AdamW(lr=0.1, warmup_epochs=1),
            figure_every_n_steps=0,
        )
        fit = trainer(tmp_path / "run", epochs=4, callbacks=callbacks, enable_checkpointing=False)
        fit.fit(module, datamodule(synthetic_manifests, tmp_path / "cache"), ckpt_path=ckpt_path)
        fit.save_checkpoint(tmp_path / "killed.ckpt")
        return losses.losses

    assert_resumes_exactly(run, tmp_path / "killed.ckpt")


def test_monitoring_and_export_through_the_cli(tmp_path, monkeypatch, synthetic_manifests):
    """`ichor fit` logs the scalars and the reconstruction figure; `export-encoder` reloads it."""
    monkeypatch.chdir(tmp_path)  # the config writes runs/ and .ichor_cache/ relative to the CWD
    args = [
        *demo_micro_args(),
        "--trainer.max_epochs=2",
        "--model.init_args.figure_every_n_steps=1",
        *small_data_args(synthetic_manifests),
    ]
    assert main(args) == 0
    runs = tmp_path / "runs" / "pretrain_demo"
    log_dir = runs / "version_0"
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/loss_mean_prediction", "train/scans_per_s", "train/grad_norm"} <= scalars
    assert any(tag.startswith("lr-AdamW") for tag in scalars)
    assert "val/reconstruction" in events.Tags()["images"]
    assert (log_dir / "config.yaml").is_file()

    assert main([*args, "--trainer.max_epochs=3", "--ckpt_path=last"]) == 0  # resume through the CLI: a new version
    last = runs / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 2

    out = tmp_path / "encoder"
    assert main(["export-encoder", str(last), "--out", str(out)]) == 0
    encoder, metadata = load_encoder(out)
    assert metadata["harmonisation"]["shape"] == [32, 48, 32]
    assert metadata["img_size"] == [32, 48, 32] and encoder.embed_dim == 96


@pytest.mark.slow
def test_two_process_ddp_resumes_exactly(tmp_path, monkeypatch, synthetic_manifests):
    """Killed after 2 of 3 epochs and resumed with --ckpt_path last, a 2-process DDP run ends with the
    weights of an uninterrupted one: Lightning's DistributedSampler shuffles the resumed epoch as that
    epoch, the masking and augmentation draws follow (seed, epoch, batch, rank)."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    )
    args = [*demo_micro_args(), *small_data_args(synthetic_manifests), "--trainer.limit_val_batches=1"]
    args += ["--trainer.max_epochs=3"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    two_process_ddp(whole, *args)
    two_process_ddp(cut, *args, "--trainer.callbacks+=helpers.KillAfter", "--trainer.callbacks.epochs=2")
    two_process_ddp(cut, *args, "--ckpt_path=last")
    runs = "runs/pretrain_demo/version_{}/checkpoints/last.ckpt"
    ends = [
        torch.load(folder / runs.format(v), map_location="cpu", weights_only=True)
        for folder, v in ((whole, 0), (cut, 1))
    ]
    assert ends[0]["global_step"] == ends[1]["global_step"] and ends[1]["epoch"] == 2
    for name, weight in ends[0]["state_dict"].items():
        torch.testing.assert_close(ends[1]["state_dict"][name], weight, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_two_process_ddp_without_unused_parameters(tmp_path, synthetic_manifests):
    """DDP over 2 CPU processes (gloo), the way a cluster runs `ichor fit`: no unused parameters."""
    two_process_ddp(tmp_path, *demo_micro_args(), "--trainer.max_epochs=2", *small_data_args(synthetic_manifests))
    last = tmp_path / "runs" / "pretrain_demo" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] >= 2 and state["hyper_parameters"]["backbone"]["img_size"] == [32, 48, 32]
