"""DownstreamTask: frozen linear probe, layer-wise lr decay, metadata checks, shipped configs, predictions CSV."""

from dataclasses import replace

import pandas as pd
import pytest
import torch
from helpers import DATA_ARGS, HARMONISATION, downstream_data_args
from helpers import config_args as shipped_config_args
from lightning.pytorch import Trainer

from ichor.cli import main
from ichor.data import CBFDataModule
from ichor.downstream import DownstreamTask
from ichor.downstream.task import TASK_OPTIM
from ichor.models.weights import WeightsError, load_encoder
from ichor.training.lrd import param_groups_lrd


@pytest.fixture(scope="module")
def setting(tmp_path_factory, downstream_manifests, tiny_encoder):
    return {
        "manifests": downstream_manifests,
        "encoder": str(tiny_encoder),
        "cache": str(tmp_path_factory.mktemp("downstream") / "cache"),
    }


def datamodule(setting, **kwargs) -> CBFDataModule:
    return CBFDataModule(
        setting["manifests"], cache_dir=setting["cache"], **{**DATA_ARGS, "target": "diagnosis", **kwargs}
    )


def built_task(setting, **kwargs) -> DownstreamTask:
    """A task with encoder and head built as setup() would, without a trainer."""
    task = DownstreamTask(setting["encoder"], **kwargs)
    task.configure_encoder(HARMONISATION)
    task.configure_head(["CN", "AD", "CN"])
    return task


def trainer(tmp_path, **kwargs) -> Trainer:
    return Trainer(
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_linear_probe_keeps_the_encoder_frozen_and_in_eval_mode(setting, tmp_path):
    task = DownstreamTask(setting["encoder"], mode="linear_probe", optim=replace(TASK_OPTIM, lr=0.1))
    trainer(tmp_path, max_epochs=2, limit_val_batches=1).fit(task, datamodule=datamodule(setting))
    reference, _ = load_encoder(setting["encoder"])
    for key, value in reference.state_dict().items():
        assert torch.equal(task.encoder.state_dict()[key], value), key  # weights unchanged by training
    assert not any(p.requires_grad for p in task.encoder.parameters())
    assert task.global_step == 4 and task.head.fc.weight.abs().sum() > 0
    task.train()  # what a loop does before training: the encoder must stay in eval mode
    assert task.training and task.head.training and task.feature_norm.training
    assert not any(module.training for module in task.encoder.modules())
    assert isinstance(task.feature_norm, torch.nn.BatchNorm1d) and not task.feature_norm.affine
    assert task.hparams.head_args["classes"] == ["AD", "CN"]  # inferred from the training labels, saved
    features = torch.randn(4, task.encoder.embed_dim)
    assert task.read_out(features, torch.randn(4, 2)).shape == (4, 2)


def test_the_head_reads_the_global_cbf_scalars_beside_the_features(setting):
    """A relative map hides a global hypoperfusion: the head gets the log brain mean and spread beside the features."""
    data = datamodule(setting)
    data.setup("predict")
    batch = next(iter(data.predict_dataloader()))
    lower = {**batch, "global_cbf": batch["global_cbf"] - 0.5}  # the same maps, 40 % less CBF
    task = built_task(setting).eval()
    assert task.head.fc.in_features == task.encoder.embed_dim + 2
    assert not torch.allclose(task(batch), task(lower))
    with pytest.raises(ValueError, match="global_cbf"):
        task({key: value for key, value in batch.items() if key != "global_cbf"})
    without = built_task(setting, global_cbf=False).eval()
    assert without.head.fc.in_features == without.encoder.embed_dim
    torch.testing.assert_close(without(batch), without(lower))


def test_finetune_layer_decay_groups(setting):
    task = built_task(setting, mode="finetune", layer_decay=0.75)
    depth = task.encoder.depth
    groups = param_groups_lrd(task, 1e-3, 0.05, depth, 0.75)
    lr_of = {name: group["lr"] for group in groups for name in group["names"]}
    assert lr_of["head.fc.weight"] == pytest.approx(1e-3) and lr_of["encoder.norm.weight"] == pytest.approx(1e-3)
    block_lr = [lr_of[f"encoder.blocks.{i}.attn.qkv.weight"] for i in range(depth)]
    assert lr_of["encoder.patch_embed.proj.weight"] == pytest.approx(1e-3 * 0.75 ** (depth + 1))
    for shallow, deep in zip([lr_of["encoder.patch_embed.proj.weight"], *block_lr], [*block_lr, 1e-3]):
        assert shallow / deep == pytest.approx(0.75)  # deeper layers learn faster, by 1/0.75 per layer
    decay = {name: group["weight_decay"] for group in groups for name in group["names"]}
    assert decay["encoder.blocks.0.attn.qkv.weight"] == 0.05 and decay["encoder.blocks.0.attn.qkv.bias"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(task.parameters()))
    probe = built_task(setting, mode="linear_probe")
    trainable = [n for n, p in probe.named_parameters() if p.requires_grad]
    assert trainable == ["head.fc.weight", "head.fc.bias"]


def test_scratch_is_the_same_architecture_with_new_weights(setting):
    scratch, pretrained = built_task(setting, mode="scratch"), built_task(setting, mode="finetune")
    shapes = {k: v.shape for k, v in scratch.encoder.state_dict().items()}
    assert shapes == {k: v.shape for k, v in pretrained.encoder.state_dict().items()}
    assert not torch.equal(scratch.encoder.blocks[0].attn.qkv.weight, pretrained.encoder.blocks[0].attn.qkv.weight)
    assert all(p.requires_grad for p in scratch.encoder.parameters())


def test_data_harmonised_differently_from_the_encoder_is_refused(setting, tmp_path):
    task = DownstreamTask(setting["encoder"])
    with pytest.raises(
        WeightsError, match=r"spacing: encoder \[4.0, 4.0, 4.0\], data \[2.0, 2.0, 2.0\].*set the data's spacing"
    ):
        task.configure_encoder({**HARMONISATION, "spacing": [2.0, 2.0, 2.0]})
    with pytest.raises(WeightsError, match="normalization: encoder 'relative', data 'zscore'"):
        trainer(tmp_path, fast_dev_run=1).fit(task, datamodule=datamodule(setting, normalization="zscore"))
    # another grid at the same spacing is fine: position embeddings follow the data
    task.configure_encoder({**HARMONISATION, "shape": [24, 16, 16]})
    assert task.encoder.img_size == (24, 16, 16) and task.encoder.pos_embed.shape[1] == 3 * 2 * 2


def config_args(setting, tmp_path, name: str) -> list[str]:
    """Run a shipped config on the test data and encoder, writing under tmp_path."""
    return [
        *shipped_config_args(name),
        f"--model.init_args.encoder={setting['encoder']}",
        *downstream_data_args(setting["manifests"], setting["cache"]),
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
    ]


def test_predict_writes_one_row_per_scan(setting, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config writes under runs/ relative to the working directory
    args = config_args(setting, tmp_path, "probe_diagnosis.yaml")
    assert main(["fit", *args, "--trainer.max_epochs=1"]) == 0
    checkpoint = tmp_path / "runs/probe_diagnosis/version_0/checkpoints/best.ckpt"
    assert main(["predict", *args, f"--ckpt_path={checkpoint}"]) == 0
    predictions = pd.read_csv(tmp_path / "runs/probe_diagnosis/predictions.csv")
    manifest = pd.concat([pd.read_csv(m) for m in setting["manifests"]], ignore_index=True)
    assert list(predictions.columns) == [
        "subject",
        "session",
        "study",
        "path",
        "split",
        "diagnosis",
        "prediction",
        "prob_AD",
        "prob_CN",
    ]
    assert predictions["subject"].tolist() == manifest["subject"].tolist()
    assert predictions["diagnosis"].tolist() == manifest["diagnosis"].tolist()
    assert set(predictions["split"]) == {"train", "val", "test"}  # which scans the model was fitted on
    assert set(predictions["prediction"]) <= {"AD", "CN"}
    assert ((predictions["prob_AD"] + predictions["prob_CN"]) - 1).abs().max() < 1e-5
    assert not list(tmp_path.glob("runs/probe_diagnosis/.predictions.csv.*"))  # no temp file left behind
    # a second predict does not replace these predictions silently
    before = (tmp_path / "runs/probe_diagnosis/predictions.csv").read_text()
    assert main(["predict", *args, f"--ckpt_path={checkpoint}"]) == 1
    assert (tmp_path / "runs/probe_diagnosis/predictions.csv").read_text() == before


def test_drop_path_drops_whole_samples_while_training_and_nothing_in_eval():
    from ichor.models.vit import drop_path

    x = torch.ones(4000, 3, 5)
    dropped = drop_path(x, 0.3, training=True)
    per_sample = dropped[:, 0, 0]
    assert (dropped == per_sample[:, None, None]).all()  # a whole sample's branch, never single tokens
    assert torch.allclose(per_sample.unique(), torch.tensor([0.0, 1 / 0.7]))
    assert abs(float((per_sample == 0).float().mean()) - 0.3) < 0.03
    assert abs(float(per_sample.mean()) - 1.0) < 0.05  # rescaled: the expected branch is unchanged
    assert torch.equal(drop_path(x, 0.3, training=False), x)


def test_drop_path_rises_to_the_last_block_in_finetuning_and_is_off_in_a_probe(setting):
    rates = [block.drop_path for block in built_task(setting, mode="finetune", drop_path=0.2).encoder.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates) and len(set(rates)) > 1
    probe = built_task(setting, mode="linear_probe", drop_path=0.2)
    assert all(block.drop_path == 0.0 for block in probe.encoder.blocks)
    with pytest.raises(ValueError, match="drop_path must be in"):
        built_task(setting, mode="finetune", drop_path=1.0)


def test_early_stopping_stops_when_the_monitored_metric_stalls(setting, tmp_path, monkeypatch):
    """With a zero learning rate the validation metric cannot improve: patience 1 stops after epoch 2 of 10."""
    from helpers import tiny_task_args

    from ichor.training.runs import IchorCLI

    monkeypatch.chdir(tmp_path)
    args = [
        *shipped_config_args("finetune_diagnosis.yaml"),
        *tiny_task_args(setting["encoder"], setting["manifests"], setting["cache"]),
        "--trainer.max_epochs=10",
        "--model.init_args.optim.lr=0.0",
        "--model.init_args.optim.warmup_epochs=0",
        "--early_stopping_patience=1",
    ]
    cli = IchorCLI(args=args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    stopper = cli.trainer.early_stopping_callback
    assert stopper is not None and stopper.monitor == "val/auroc" == cli.trainer.checkpoint_callback.monitor
    assert cli.trainer.current_epoch == 2 and stopper.stopped_epoch == 1
