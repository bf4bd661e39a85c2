"""Run folders that keep every run's weights, `--ckpt_path last`, and the one seed of a run."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from helpers import config_args, small_data_args

from ichor.cli import main
from ichor.training.runs import claim_version, newest_checkpoint

TINY = ["--model.init_args.backbone.preset=mae_vit_micro", "--trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def fit_args(manifests, cache: Path, *more: str) -> list[str]:
    """One short pre-training epoch of the demo config on the small synthetic data."""
    return ["fit", *config_args("pretrain_demo.yaml"), *TINY, *small_data_args(manifests),
            f"--data.init_args.cache_dir={cache}", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", *more]  # fmt: skip


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_two_fits_of_one_config_keep_both_runs_and_last_resumes_the_newest(
    tmp_path, monkeypatch, capsys, synthetic_manifests, cache
):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs" / "pretrain_demo"
    assert main(fit_args(synthetic_manifests, cache, "--seed_everything=1")) == 0
    first = {name: load(runs / "version_0" / "checkpoints" / name) for name in ("best.ckpt", "last.ckpt")}
    # the second run fixes its split (data seed 5) and draws its weights with seed 2
    assert main(fit_args(synthetic_manifests, cache, "--seed_everything=2", "--data.init_args.seed=5")) == 0
    for name, state in first.items():  # the first run's weights are where they were, unchanged
        kept = load(runs / "version_0" / "checkpoints" / name)
        assert all(torch.equal(kept["state_dict"][k], v) for k, v in state["state_dict"].items())
    second = load(runs / "version_1" / "checkpoints" / "last.ckpt")
    assert (runs / "version_1" / "config.yaml").is_file() and (runs / "version_1" / "splits.csv").is_file()
    assert newest_checkpoint(runs, "last.ckpt") == runs / "version_1" / "checkpoints" / "last.ckpt"

    assert main(fit_args(synthetic_manifests, cache, "--ckpt_path=last", "--trainer.max_epochs=2")) == 0
    resumed = load(runs / "version_2" / "checkpoints" / "last.ckpt")
    assert (second["epoch"], resumed["epoch"]) == (0, 1)  # went on from the second run, into a folder of its own
    assert resumed["global_step"] == 2 * second["global_step"]
    assert resumed["hyper_parameters"]["seed"] == second["hyper_parameters"]["seed"] == 2  # the checkpoint's seed
    assert load(runs / "version_1" / "checkpoints" / "last.ckpt")["epoch"] == 0

    capsys.readouterr()  # the run folder stands for its newest last.ckpt (the Makefile's demo exports it so)
    assert main(["export-encoder", str(runs), "--out", str(tmp_path / "encoder")]) == 0
    assert f"exporting {runs / 'version_2' / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().out


def test_ckpt_path_last_without_an_earlier_run(tmp_path, monkeypatch, capsys, synthetic_manifests, cache):
    """A fit starts from scratch (so `--ckpt_path last` can be set before the first run); test refuses in one line."""
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="no earlier run has a .*version_\\*/checkpoints/last.ckpt"):
        assert main(fit_args(synthetic_manifests, cache, "--ckpt_path=last")) == 0
    assert load(tmp_path / "runs/pretrain_demo/version_0/checkpoints/last.ckpt")["epoch"] == 0
    test = ["test", *config_args("pretrain_demo.yaml"), *TINY, *small_data_args(synthetic_manifests)]
    assert main([*test, "--ckpt_path=best", "--trainer.default_root_dir=elsewhere"]) == 1
    assert "--ckpt_path best: no elsewhere/pretrain_demo/version_*/checkpoints/best.ckpt" in capsys.readouterr().err


def test_a_run_that_fails_before_writing_leaves_no_empty_version_folder(tmp_path, monkeypatch, capsys, cache):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs/pretrain_demo/version_0").mkdir(parents=True)  # an earlier run's folder stays
    assert main(fit_args([], cache, "--data.init_args.manifests=[]")) == 1
    assert "needs at least one manifest" in capsys.readouterr().err
    assert [path.name for path in (tmp_path / "runs/pretrain_demo").iterdir()] == ["version_0"]


def test_runs_started_at_once_claim_different_folders(tmp_path):
    claimed: list[int] = []
    (tmp_path / "version_0").mkdir()  # an earlier run
    (tmp_path / "version_notes").mkdir()  # not a version
    start = threading.Barrier(8)

    def claim() -> None:
        start.wait()
        claimed.append(claim_version(tmp_path))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == list(range(1, 9))


def built(*args: str):
    from ichor.training.runs import IchorCLI

    image = "--model.init_args.backbone.img_size=[32,48,32]"  # weights built at once, not at setup
    return IchorCLI(args=[*config_args("pretrain_demo.yaml"), *TINY, image, *args], run=False)


def test_seed_everything_is_the_seed_of_the_model_and_the_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one, two, again = built("--seed_everything=1"), built("--seed_everything=2"), built("--seed_everything=1")
    for cli, seed in ((one, 1), (two, 2), (again, 1)):
        assert cli.model.hparams.seed == seed and cli.datamodule.hparams.seed == seed
    weights = [cli.model.state_dict() for cli in (one, two, again)]
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])  # the same seed: the same run
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    own = built("--seed_everything=3", "--data.init_args.seed=0")  # a seed set explicitly is kept
    assert own.datamodule.hparams.seed == 0 and own.model.hparams.seed == 3


def test_parsing_a_run_leaves_its_overrides_plain_data(tmp_path):
    """A benchmark parses a run (its data) before training it and records it as JSON: parsing must not
    turn the overrides' nested mappings (a callback's init_args) into Namespaces."""
    import json

    from helpers import CONFIGS

    from ichor.training.runs import Run, parse_run

    callback = {"class_path": "ichor.evaluation.online_probe.OnlineProbe", "init_args": {"target": "diagnosis"}}
    run = Run.of(
        [CONFIGS / "common" / "demo.yaml", CONFIGS / "pretrain_demo.yaml"],
        {"trainer": {"callbacks": [callback], "logger": False}},
    )
    before = json.dumps(run.record())
    parse_run(run)
    assert json.dumps(run.record()) == before
