"""Benchmark reuse by content: a finished part is reused for the same config values, manifests and data,
wherever they live, and run again (saying what changed) when any of them changed."""

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers import CONFIGS, make_dataset

from ichor.benchmark.config import PretrainSpec
from ichor.benchmark.pretraining import pretrain
from ichor.benchmark.reuse import architecture_key, changed_keys, run_key
from ichor.benchmark.run import resumable_fold
from ichor.downstream.cv import Fold
from ichor.training.runs import Run

PRETRAIN = [str(CONFIGS / "common" / "demo.yaml"), str(CONFIGS / "pretrain_demo.yaml")]
TASK = [str(CONFIGS / "common" / "demo.yaml"), str(CONFIGS / "finetune_diagnosis.yaml")]


def data_run(configs, root: Path, **init_args) -> Run:
    """``configs`` reading the manifests under ``root`` (cache inside it too)."""
    manifests = sorted(str(p) for p in root.glob("study-*/manifest.csv"))
    data = {"manifests": manifests, "cache_dir": str(root / "cache"), **init_args}
    return Run.of(configs, {"data": {"init_args": data}})


@pytest.fixture
def dataset(tmp_path) -> Path:
    make_dataset(tmp_path / "data", studies=2, subjects=2)
    return tmp_path / "data"


def test_the_key_is_the_content_not_the_paths(dataset, tmp_path):
    key = run_key(data_run(PRETRAIN, dataset))
    assert key == run_key(data_run(PRETRAIN, dataset))

    # The same data and configs elsewhere (copies under other paths, another cache): the same key.
    moved = tmp_path / "moved"
    shutil.copytree(dataset, moved)
    configs = [shutil.copy(config, tmp_path / f"copy-{Path(config).name}") for config in PRETRAIN]
    assert run_key(data_run(configs, moved, cache_dir=str(tmp_path / "other-cache"), num_workers=0)) == key

    # A config value, a manifest row, a data file: each changes the key, and the change is named.
    value = run_key(data_run(PRETRAIN, dataset, batch_size=3))
    assert changed_keys(key, value) == ["data.init_args.batch_size"]
    manifest = dataset / "study-01" / "manifest.csv"
    table = pd.read_csv(manifest)
    table.loc[1, "age"] += 1
    table.to_csv(manifest, index=False)
    assert changed_keys(key, run_key(data_run(PRETRAIN, dataset))) == ["data.init_args.manifests"]
    table.iloc[:1].to_csv(manifest, index=False)  # a row dropped
    dropped = run_key(data_run(PRETRAIN, dataset))
    assert changed_keys(key, dropped) == ["data.init_args.manifests"]
    scan = next((dataset / "study-02").glob("*.nii.gz"))
    shutil.copy(next((dataset / "study-01").glob("*.nii.gz")), scan)  # a file replaced by another's bytes
    assert changed_keys(dropped, run_key(data_run(PRETRAIN, dataset))) == ["data.init_args.manifests"]


def test_an_encoder_is_keyed_by_its_files(tmp_path, dataset):
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "model.safetensors").write_bytes(b"weights")
    run = data_run(TASK, dataset).override({"model": {"init_args": {"encoder": str(encoder)}}})
    key = run_key(run)
    assert key["model"]["init_args"]["encoder"] == {"model.safetensors": "7-" + _sha256(b"weights")}
    shutil.copytree(encoder, tmp_path / "elsewhere")
    moved = data_run(TASK, dataset).override({"model": {"init_args": {"encoder": str(tmp_path / "elsewhere")}}})
    assert run_key(moved) == key
    (encoder / "model.safetensors").write_bytes(b"retrained")
    assert changed_keys(key, run_key(run)) == ["model.init_args.encoder.model.safetensors"]


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_a_fold_result_is_reused_for_the_same_content_and_run_again_when_it_changed(
    tmp_path, dataset, monkeypatch, caplog
):
    calls = []

    def fake_run_fold(run, fold, folder):
        calls.append(run)
        return {"fold": fold.name, "test/auroc": 0.5 + len(calls) / 10}

    monkeypatch.setattr("ichor.benchmark.run.run_fold", fake_run_fold)
    fold = Fold("study-01", pd.DataFrame({"subject": ["a", "b", "c"], "split": ["train", "val", "test"]}))
    out = tmp_path / "out"
    first = resumable_fold(data_run(TASK, dataset), fold, out)
    moved = shutil.copytree(dataset, tmp_path / "moved")
    assert resumable_fold(data_run(TASK, moved), fold, out) == first and len(calls) == 1  # moved: reused

    caplog.set_level(logging.INFO, logger="ichor.benchmark.run")
    resumable_fold(data_run(TASK, dataset, spacing=6.0), fold, out)  # a config value: run again
    assert len(calls) == 2 and "data.init_args.spacing changed since" in caplog.text
    table = pd.read_csv(dataset / "study-02" / "manifest.csv")
    table.loc[0, "diagnosis"] = "AD" if table.loc[0, "diagnosis"] != "AD" else "CN"
    table.to_csv(dataset / "study-02" / "manifest.csv", index=False)
    resumable_fold(data_run(TASK, dataset, spacing=6.0), fold, out)  # a manifest row: run again
    assert len(calls) == 3 and "data.init_args.manifests changed since" in caplog.text
    other = Fold("study-01", fold.splits.assign(split=["train", "train", "test"]))
    resumable_fold(data_run(TASK, dataset, spacing=6.0), other, out)  # another split: run again
    assert len(calls) == 4 and "the split changed since" in caplog.text


def test_a_scratch_fold_is_keyed_by_the_encoder_s_architecture_not_its_weights(tmp_path, dataset, monkeypatch):
    """Scratch borrows only the encoder's architecture: a retrained encoder does not run it again, a new shape does."""
    from ichor.models.weights import METADATA_FILE

    calls = []
    monkeypatch.setattr(
        "ichor.benchmark.run.run_fold", lambda run, fold, folder: calls.append(run) or {"n": len(calls)}
    )
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    record = {"architecture": {"depth": 4}, "img_size": [48, 56, 48], "harmonisation": {"spacing": 4.0}}

    def scratch_fold(weights: bytes, **changes) -> dict:
        (encoder / "model.safetensors").write_bytes(weights)
        (encoder / METADATA_FILE).write_text(json.dumps({**record, "pretraining": {"epoch": len(weights)}, **changes}))
        run = data_run(TASK, dataset).override({"model": {"init_args": {"encoder": str(encoder), "mode": "scratch"}}})
        return resumable_fold(run, fold, tmp_path / "out", architecture_key(encoder))

    fold = Fold("study-01", pd.DataFrame({"subject": ["a", "b", "c"], "split": ["train", "val", "test"]}))
    first = scratch_fold(b"weights")
    assert scratch_fold(b"retrained weights") == first and len(calls) == 1
    scratch_fold(b"retrained weights", architecture={"depth": 6})
    assert len(calls) == 2


def test_pretraining_is_reused_by_content_resumed_when_interrupted_and_redone_when_changed(
    tmp_path, dataset, monkeypatch, caplog
):
    from ichor.models.weights import METADATA_FILE

    fits = []

    def fake_build_run(run, folder):
        def fit(model, datamodule, ckpt_path):
            fits.append((run, ckpt_path))
            (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
            (folder / "checkpoints" / "last.ckpt").write_text("weights")
            trainer.checkpoint_callback.last_model_path = str(folder / "checkpoints" / "last.ckpt")

        trainer = SimpleNamespace(
            fit=fit,
            checkpoint_callback=SimpleNamespace(last_model_path=""),
            callback_metrics={},
            callbacks=[],
            current_epoch=6,
            global_step=12,
            max_epochs=None,
        )
        return SimpleNamespace(trainer=trainer, model=None, datamodule=None)

    def fake_export(checkpoint, encoder, overwrite):
        encoder.mkdir(parents=True, exist_ok=True)
        (encoder / METADATA_FILE).write_text("{}")
        return encoder

    monkeypatch.setattr("ichor.training.runs.build_run", fake_build_run)
    monkeypatch.setattr("ichor.models.weights.export_encoder", fake_export)

    def benchmark(root: Path, **data) -> SimpleNamespace:
        manifests = sorted(str(p) for p in root.glob("study-*/manifest.csv"))
        init_args = {"manifests": manifests, "cache_dir": str(root / "cache"), **data}
        return SimpleNamespace(overrides={"data": {"init_args": init_args}}, pretrain_overrides={}, epochs={})

    spec = PretrainSpec(PRETRAIN)
    encoder = pretrain("mae", spec, benchmark(dataset), tmp_path)
    assert len(fits) == 1 and fits[0][1] is None
    moved = shutil.copytree(dataset, tmp_path / "moved")
    assert pretrain("mae", spec, benchmark(moved), tmp_path) == encoder and len(fits) == 1  # same content: reused

    (encoder / METADATA_FILE).unlink()  # interrupted after its last checkpoint, before the export
    pretrain("mae", spec, benchmark(dataset), tmp_path)
    assert fits[-1][1] == tmp_path / "pretrain" / "mae" / "checkpoints" / "last.ckpt" and len(fits) == 2

    caplog.set_level(logging.INFO, logger="ichor.benchmark.pretraining")
    masked = PretrainSpec(PRETRAIN, {"model": {"init_args": {"mask_ratio": 0.5}}})
    pretrain("mae", masked, benchmark(dataset), tmp_path)  # a changed value: pre-trained again, from the start
    assert len(fits) == 3 and fits[-1][1] is None
    assert "model.init_args.mask_ratio changed since" in caplog.text
    table = pd.read_csv(dataset / "study-01" / "manifest.csv")
    table.loc[0, "age"] = 99
    table.to_csv(dataset / "study-01" / "manifest.csv", index=False)
    pretrain("mae", masked, benchmark(dataset), tmp_path)  # a manifest row: pre-trained again
    assert len(fits) == 4 and "data.init_args.manifests changed since" in caplog.text
    pretrain("mae", masked, benchmark(dataset), tmp_path)
    assert len(fits) == 4  # unchanged: reused


def test_encoder_features_are_kept_by_content_and_reused(tmp_path, dataset, monkeypatch, caplog):
    from ichor.benchmark.run import stored_features
    from ichor.data.manifest import read_manifests

    calls = []

    def fake_features(encoder, rows, base, probe):
        calls.append(len(rows))
        weights = (Path(encoder) / "model.safetensors").read_bytes()
        return pd.DataFrame({"f000": [len(weights) + i for i in range(len(rows))]}, index=rows["path"].to_numpy())

    monkeypatch.setattr("ichor.benchmark.run.encoder_features", fake_features)
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "model.safetensors").write_bytes(b"weights")
    hparams = SimpleNamespace(cache_dir=str(tmp_path / "cache"))
    base = SimpleNamespace(
        datamodule=SimpleNamespace(hparams=hparams),
        model=SimpleNamespace(hparams=SimpleNamespace(pooling="brain_mean")),
    )
    rows = read_manifests(sorted(dataset.glob("study-*/manifest.csv")))
    out = tmp_path / "out"

    first = stored_features(rows, encoder, base, {}, out)
    assert calls == [4] and list(first.index) == list(rows["path"])
    caplog.set_level(logging.INFO, logger="ichor.benchmark.run")
    moved = read_manifests(sorted(shutil.copytree(dataset, tmp_path / "moved").glob("study-*/manifest.csv")))
    again = stored_features(moved, encoder, base, {}, out)  # the same scans elsewhere: read back
    assert calls == [4] and again.to_numpy().tolist() == first.to_numpy().tolist()
    assert "reusing the features of 4 scans" in caplog.text

    stored_features(rows, encoder, base, {"pooling": "region"}, out)  # another probe: embedded again
    assert calls == [4, 4]
    (encoder / "model.safetensors").write_bytes(b"retrained weights")
    assert stored_features(rows, encoder, base, {}, out)["f000"].iloc[0] == len(b"retrained weights")
    assert calls == [4, 4, 4]
    scan = Path(rows["path"].iloc[0])
    scan.write_bytes(scan.read_bytes() + b"\0")  # a scan's bytes changed: embedded again
    stored_features(rows.iloc[[0]], encoder, base, {}, out)
    assert calls == [4, 4, 4, 1]
