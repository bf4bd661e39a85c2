"""The online probe: set in YAML, logs its scalars, and follows a representation that improves."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import make_dataset, quiet_trainer, small_datamodule
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ichor.evaluation.online_probe import OnlineProbe, paired_gain, probe_scores, rankme
from ichor.models import Backbone
from ichor.pretrain import MAEPretrainer
from ichor.training.optim import AdamW

SCALARS = {
    "probe/auroc",
    "probe/balanced_accuracy",
    "probe/site_balanced_accuracy",
    "probe/site_chance",
    "probe/rankme",
}
GRID = {"spacing": 4.0, "shape": (16, 16, 16), "val_fraction": 0.0}  # make_dataset's maps, all for training


def test_rankme_counts_the_effective_dimensions():
    rng = np.random.default_rng(0)
    assert rankme(np.outer(rng.standard_normal(50), rng.standard_normal(8))) == pytest.approx(1.0, abs=1e-3)
    assert rankme(np.eye(8)) == pytest.approx(7.0, rel=1e-3)  # centring takes the shared mean direction out
    assert 6 < rankme(rng.standard_normal((200, 8))) <= 8


def test_rankme_does_not_read_a_shared_mean_as_collapse():
    """Features far from the origin (a large mean every scan shares) but varied in 8 directions: rank 8, not 1."""
    rng = np.random.default_rng(0)
    features = 100.0 + rng.standard_normal((200, 8))
    assert rankme(features) > 6


def test_the_global_cbf_scalars_give_the_probe_a_global_level_the_features_do_not_show():
    """A global hypoperfusion hidden from relative features is read from the scalars beside them."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["CN", "SVD"], 30)
    features = rng.standard_normal((60, 8))  # the same distribution in both classes
    scalars = np.stack([np.log(np.where(labels == "SVD", 35.0, 50.0)) + 0.05 * rng.standard_normal(60)], axis=1)
    subjects, studies = np.arange(60).astype(str), np.tile(["a", "b"], 30)
    blind = probe_scores(features, labels, True, subjects, studies, folds=3)
    told = probe_scores(features, labels, True, subjects, studies, folds=3, scalars=scalars)
    assert blind["auroc"] < 0.7 < 0.95 < told["auroc"]
    assert told["rankme"] == blind["rankme"]  # the encoder's own rank: the scalars are not features of it
    site_level = np.stack([np.log(np.where(studies == "a", 30.0, 60.0))], axis=1)  # the scalars tell the sites apart
    told_sites = probe_scores(features, labels, True, subjects, studies, folds=3, scalars=site_level)
    assert told_sites["site_balanced_accuracy"] == blind["site_balanced_accuracy"]  # the encoder's features alone


def test_paired_gain_is_the_mean_and_spread_of_per_draw_differences():
    initial = [{"auroc": 0.5}, {"auroc": 0.6}, {"auroc": 0.55}]
    latest = [{"auroc": 0.7}, {"auroc": 0.7}, {"auroc": 0.75}]
    gain, spread = paired_gain(initial, latest, "auroc")
    assert gain == pytest.approx(np.mean([0.2, 0.1, 0.2])) and spread == pytest.approx(np.std([0.2, 0.1, 0.2], ddof=1))


@pytest.mark.slow
def test_probe_metric_rises_as_the_encoder_learns_and_reaches_tensorboard(tmp_path):
    """From a collapsed encoder (patch embedding zeroed: every scan has the same features, AUROC 0.5),
    a few epochs of MAE on maps whose CBF level is the label make the probe read it."""
    manifests = make_dataset(tmp_path / "data", subjects=10)  # 2 studies x 10 subjects, CN/AD by CBF level
    data = small_datamodule(manifests, tmp_path / "cache", **GRID)
    torch.manual_seed(0)
    module = MAEPretrainer(
        backbone=Backbone("mae_vit_micro", patch_size=8, img_size=(16, 16, 16)),
        optim=AdamW(lr=0.1, warmup_epochs=1),
        figure_every_n_steps=0,
    )
    torch.nn.init.zeros_(module.encoder_network().patch_embed.proj.weight)
    # the encoder's own features only (the label is the CBF level, which the global scalars would give away)
    probe = OnlineProbe(target="diagnosis", every_n_epochs=2, folds=3, global_cbf=False, draws=2)
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=4,
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        callbacks=[probe],
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    assert set(events.Tags()["scalars"]) >= SCALARS | {"probe/auroc_sd"}
    auroc = [event.value for event in events.Scalars("probe/auroc")]
    steps = [event.step for event in events.Scalars("probe/auroc")]
    assert steps == [0, 10, 20]  # before training, then every second epoch (5 batches an epoch)
    assert auroc[0] == pytest.approx(0.5) and auroc[-1] > 0.8, auroc
    assert events.Scalars("probe/site_chance")[0].value == 0.5
    assert trainer.callback_metrics["probe/auroc"] == pytest.approx(auroc[-1])
    assert probe.initial["probe/auroc"] == pytest.approx(auroc[0]) and probe.latest["probe/auroc"] == pytest.approx(
        auroc[-1]
    )
    assert len(probe.initial_draws) == len(probe.latest_draws) == 2  # two label draws, paired at both ends
    gain, spread = paired_gain(probe.initial_draws, probe.latest_draws, "auroc")
    assert gain == pytest.approx(auroc[-1] - auroc[0]) and gain > 2 * spread
    resumed = OnlineProbe(target="diagnosis")
    resumed.load_state_dict(probe.state_dict())  # what a checkpoint carries: the initial values survive a resume
    assert resumed.initial == probe.initial and resumed.initial_draws == probe.initial_draws
    assert module.encoder_network().training  # embedding left the encoder in the mode it found


def test_online_probe_is_set_in_yaml(tmp_path):
    """A trainer.callbacks entry with its class_path builds the callback, with its arguments."""
    from ichor.training.runs import IchorCLI

    config = {
        "trainer": {
            "callbacks": [
                {
                    "class_path": "ichor.evaluation.online_probe.OnlineProbe",
                    "init_args": {"target": "rating", "task": "regression", "every_n_epochs": 5, "blocks": 2},
                }
            ]
        },
        "model": {"class_path": "ichor.pretrain.MAEPretrainer"},
        "data": {"class_path": "ichor.data.CBFDataModule", "init_args": {"manifests": ["m.csv"]}},
    }
    path = Path(tmp_path / "c.yaml")
    path.write_text(yaml.safe_dump(config))
    cli = IchorCLI(args=["--config", str(path), "--trainer.logger=false"], run=False)
    (probe,) = [c for c in cli.trainer.callbacks if isinstance(c, OnlineProbe)]
    assert (probe.target, probe.classification, probe.every_n_epochs, probe.blocks) == ("rating", False, 5, 2)


@pytest.mark.parametrize("method", ["SimCLRPretrainer", "GenesisPretrainer"])
def test_online_probe_works_for_every_pretrainer(tmp_path, method):
    """The callback reads encoder_network(), which every pre-training method has."""
    import ichor.pretrain

    manifests = make_dataset(tmp_path / "data", subjects=6)
    data = small_datamodule(manifests, tmp_path / "cache", **GRID)
    module = getattr(ichor.pretrain, method)(backbone=Backbone("mae_vit_micro", patch_size=8, img_size=(16, 16, 16)))
    trainer = quiet_trainer(  # its root is where the datamodule writes its split table: not the CWD
        tmp_path,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        callbacks=[probe := OnlineProbe(target="diagnosis", folds=2, every_n_epochs=5)],
    )
    trainer.fit(module, data)
    assert set(trainer.callback_metrics) >= SCALARS
    assert probe._probed_at == trainer.global_step == 1  # stopped before epoch 5: the end still probed
    assert (tmp_path / "splits.csv").exists()


def test_the_global_cbf_scalars_alone_are_logged_once_as_the_reading_an_encoder_must_add_to(tmp_path):
    """With global_cbf the first probe also scores the scalars alone (no encoder): logged once, at step 0,
    kept out of the encoder's own initial and latest scalars, and carried by a checkpoint."""
    manifests = make_dataset(tmp_path / "data", subjects=8)  # CN/AD by CBF level: the scalars alone read it
    data = small_datamodule(manifests, tmp_path / "cache", **GRID)
    module = MAEPretrainer(backbone=Backbone("mae_vit_micro", patch_size=8, img_size=(16, 16, 16)))
    probe = OnlineProbe(target="diagnosis", folds=2, every_n_epochs=1, draws=2)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = quiet_trainer(
        tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=0, logger=logger, callbacks=[probe]
    )
    trainer.fit(module, data)
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    assert [event.step for event in events.Scalars("probe/auroc")] == [0, 1, 2]
    (reference,) = events.Scalars("probe/auroc_global_cbf")
    assert reference.step == 0 and reference.value == pytest.approx(probe.reference["probe/auroc_global_cbf"])
    assert reference.value > 0.9
    assert not any(name.endswith("_global_cbf") for name in {**probe.initial, **probe.latest})
    resumed = OnlineProbe(target="diagnosis")
    resumed.load_state_dict(probe.state_dict())
    assert resumed.reference == probe.reference
    blind = OnlineProbe(target="diagnosis", global_cbf=False)
    assert blind.reference == {}  # without the scalars there is no reference to compute


@pytest.mark.parametrize(("every_n_epochs", "probed_after"), [(2, [1, 3]), (None, [])])
def test_every_n_epochs_none_probes_only_before_training_and_at_the_end(every_n_epochs, probed_after):
    """A benchmark under a time budget probes at both ends only: a probe mid-run would spend the budget."""
    from types import SimpleNamespace

    probe = OnlineProbe(target="diagnosis", every_n_epochs=every_n_epochs)
    probed = []
    probe.probe = lambda trainer, module: probed.append(trainer.current_epoch)  # type: ignore[method-assign]
    for epoch in range(5):
        probe.on_train_epoch_end(SimpleNamespace(current_epoch=epoch), None)
    assert probed == probed_after
    probe.on_train_start(SimpleNamespace(current_epoch=0), None)
    assert probed == [*probed_after, 0]
