"""DownstreamTask in LoRA mode: a frozen base, the paper's head, a checkpoint that exports merged."""

import json
from dataclasses import replace

import torch
from helpers import DATA_ARGS, config_args, downstream_data_args, quiet_trainer

from ichor.cli import main
from ichor.data import CBFDataModule
from ichor.downstream import DownstreamTask
from ichor.downstream.task import TASK_OPTIM
from ichor.explain.checkpoint import load_task
from ichor.models.lora import ADAPTERS_RECORD, LoRA, load_adapters
from ichor.models.weights import load_encoder


def test_lora_trains_adapters_norm_and_head_and_leaves_the_base_bit_identical(
    downstream_manifests, tiny_encoder, tmp_path
):
    task = DownstreamTask(
        str(tiny_encoder), mode="lora", lora=LoRA(rank=4, alpha=8), optim=replace(TASK_OPTIM, lr=0.05)
    )
    data = CBFDataModule(downstream_manifests, cache_dir=tmp_path / "cache", **{**DATA_ARGS, "target": "diagnosis"})
    quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=1).fit(task, datamodule=data)
    assert task.global_step == 4
    reference, _ = load_encoder(tiny_encoder)
    for key, value in reference.state_dict().items():
        assert torch.equal(task.encoder.state_dict()[key], value), key  # the base: not one bit changed
    trained = {name.split(".")[0] for name, p in task.named_parameters() if p.requires_grad}
    assert trained == {"encoder", "feature_norm", "head"}
    assert all(".lora_" in name for name, p in task.encoder.named_parameters() if p.requires_grad)
    assert all(task.encoder.blocks[0].attn.qkv.lora_B[t].abs().sum() > 0 for t in ("query", "key", "value"))
    assert isinstance(task.feature_norm, torch.nn.LayerNorm)  # the paper's head: mean -> LayerNorm -> linear
    assert task.hparams.lora == {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["query", "key", "value", "output"]}


def test_shipped_lora_config_exports_a_merged_encoder_and_its_adapters(
    downstream_manifests, tiny_encoder, tmp_path, monkeypatch
):
    """`ichor fit` with lora_diagnosis.yaml, then `ichor export-encoder` of its checkpoint: a plain encoder
    whose features are the adapted task's, a record saying what was merged, and the adapters alone."""
    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        *config_args("lora_diagnosis.yaml"),
        f"--model.init_args.encoder={tiny_encoder}",
        "--model.init_args.optim.lr=0.05",  # adapters far from zero, so that merging is tested on a real update
        *downstream_data_args(downstream_manifests, tmp_path / "cache"),
        "--trainer.max_epochs=2",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
    ]
    assert main(args) == 0
    checkpoint = tmp_path / "runs/lora_diagnosis/version_0/checkpoints/last.ckpt"
    out = tmp_path / "merged"
    assert main(["export-encoder", str(checkpoint), "--out", str(out)]) == 0

    record = json.loads((out / "encoder.json").read_text())
    adaptation = record["adaptation"]
    assert adaptation["method"] == "lora" and adaptation["merged"] is True
    assert (adaptation["rank"], adaptation["alpha"]) == (8, 16)
    assert adaptation["base"]["source"] == str(tiny_encoder)
    base_record = json.loads((tiny_encoder / "encoder.json").read_text())
    assert record["harmonisation"]["spacing"] == base_record["harmonisation"]["spacing"]
    assert record["pretraining"] == base_record["pretraining"]

    task, _ = load_task(checkpoint)  # the adapted encoder, unmerged
    merged, _ = load_encoder(out)
    base, _ = load_encoder(tiny_encoder)
    assert not any(".lora_" in key for key in merged.state_dict())
    images = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    brain = images > 0.3
    with torch.no_grad():
        adapted = task.encoder.forward_features(images, brain)[0]
        assert (merged.eval().forward_features(images, brain)[0] - adapted).abs().max() <= 1e-5
        assert (base.eval().forward_features(images, brain)[0] - adapted).abs().max() > 1e-3  # not a no-op

        # The adapters alone, put back on the base encoder, give the same features.
        assert json.loads((out / ADAPTERS_RECORD).read_text())["parameters"] == sum(
            p.numel() for name, p in task.encoder.named_parameters() if ".lora_" in name
        )
        load_adapters(base, out)
        assert (base.eval().forward_features(images, brain)[0] - adapted).abs().max() <= 1e-5
    # The checkpoint loads as an encoder directly too, merged.
    direct, _ = load_encoder(checkpoint)
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(direct.state_dict()[key], value)
