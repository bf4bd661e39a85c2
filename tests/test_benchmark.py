"""`ichor benchmark`: methods x modes x label budgets x folds, scratch and a regional-mean baseline."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ichor.benchmark import load_config, run_benchmark
from ichor.benchmark.baseline import scan_features

CONFIGS = Path(__file__).resolve().parents[1] / "lightning_configs"


def small_benchmark(tmp_path, manifests) -> Path:
    """A test-sized benchmark: MAE and SimCLR, 1 epoch each stage, 2 folds, budgets 0.5 and 1.

    The task is sex (8 F, 8 M): with 2 classes of 3 training subjects a half budget really
    halves them (a budget keeps at least one subject per class, so 4 diagnoses would not shrink).
    """
    config = {
        "pretrain": {"mae": str(CONFIGS / "pretrain_demo.yaml"), 
                     "simclr": {"config": str(CONFIGS / "pretrain_simclr_demo.yaml"),
                                "overrides": ["--model.init_args.projection_dim=32"]}},
        "tasks": [{"name": "sex", "target": "sex", "head": "classification", "metric": "balanced_accuracy",
                   "probe_config": str(CONFIGS / "probe_diagnosis.yaml"),
                   "finetune_config": str(CONFIGS / "finetune_diagnosis.yaml")}],
        "budgets": [0.5, 1.0], "folds": 2, "val_fraction": 0.25,
        "epochs": {"pretrain": 1, "linear_probe": 1, "finetune": 1, "scratch": 1},
        "overrides": [f"--data.init_args.manifests=[{','.join(map(str, manifests))}]",
                      f"--data.init_args.cache_dir={tmp_path / 'cache'}", "--data.init_args.spacing=6.0",
                      "--data.init_args.shape=[32,48,32]", "--data.init_args.num_workers=0",
                      "--data.init_args.batch_size=2", "--data.init_args.progress=false",
                      "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                      "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2"],
        "pretrain_overrides": ["--model.init_args.model=mae_vit_micro"],
    }
    path = tmp_path / "benchmark.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_benchmark_runs_every_method_mode_budget_and_fold(tmp_path, monkeypatch, synthetic_manifests):
    monkeypatch.chdir(tmp_path)  # the shipped configs write runs/ relative to the CWD
    out = tmp_path / "bench"
    run_benchmark(load_config(small_benchmark(tmp_path, synthetic_manifests)), out)

    summary = pd.read_csv(out / "benchmark_summary.csv")
    expected = {("sex", method, mode, budget) for budget in (0.5, 1.0)
                for method, mode in [("mae", "linear_probe"), ("mae", "finetune"), ("simclr", "linear_probe"),
                                     ("simclr", "finetune"), ("scratch", "scratch"), ("regional_mean", "baseline")]}
    keys = list(summary[["task", "method", "mode", "budget"]].itertuples(index=False, name=None))
    assert len(keys) == len(expected) and set(keys) == expected  # one row each
    assert (summary["metric"] == "balanced_accuracy").all() and (summary["folds"] == 2).all()
    assert np.isfinite(summary["mean"]).all()

    # The label budget halves the training subjects; validation and test subjects stay the same.
    for method, mode in [("mae", "linear_probe"), ("regional_mean", "baseline")]:
        rows = summary[(summary["method"] == method) & (summary["mode"] == mode)].set_index("budget")
        assert rows.loc[0.5, "n_train"] < 0.75 * rows.loc[1.0, "n_train"]
    for fold in ("fold-1", "fold-2"):
        half, full = (pd.read_csv(out / "sex/mae/finetune" / f"budget-{b}" / fold / "split_file.csv")
                      for b in ("0.5", "1"))
        assert set(half["subject"]) < set(full["subject"])
        held = [table[table["split"] != "train"].reset_index(drop=True) for table in (half, full)]
        assert held[0].equals(held[1])
        used = pd.read_csv(next((out / "sex/mae/finetune/budget-0.5" / fold).rglob("splits.csv")))
        trained = set(used.loc[used["split"] == "train", "subject"])  # what the datamodule really trained on
        assert trained == set(half.loc[half["split"] == "train", "subject"])

    assert (out / "pretrain/mae/encoder/encoder.json").is_file() and (out / "pretrain/simclr/encoder/encoder.json").is_file()
    assert (out / "figures/sex.png").stat().st_size > 0
    assert "| regional_mean | baseline |" in (out / "benchmark_summary.md").read_text()


def test_regional_features_split_the_brain_in_world_coordinates():
    """Left/right and front/back means follow the affine, not the voxel order."""
    cbf = np.zeros((4, 4, 2), np.float32)
    cbf[:2], cbf[2:] = 20.0, 60.0  # low CBF in the first half of axis 0
    gm = np.ones_like(cbf)
    wm = np.zeros_like(cbf)
    wm[:, :, 1] = 1.0
    flipped = np.diag([-2.0, 2.0, 2.0, 1.0])  # axis 0 runs right to left: the first half is the right
    features = scan_features(cbf, gm, wm, flipped)
    assert features["right_mean"] == 20.0 and features["left_mean"] == 60.0
    assert features["anterior_mean"] == features["posterior_mean"] == 40.0
    assert scan_features(cbf, gm, wm, np.diag([2.0, 2.0, 2.0, 1.0]))["left_mean"] == 20.0


def test_config_errors_name_the_file_and_the_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"pretrain": {"mae": "x.yaml"}, "tasks": [], "budgets": [0.5]}))
    with pytest.raises(ValueError, match="bad.yaml: benchmark config: `tasks` is empty"):
        load_config(path)
    task = {"name": "q", "target": "rating", "head": "regression", "metric": "auroc", "probe_config": "p.yaml",
            "finetune_config": "f.yaml"}
    path.write_text(yaml.safe_dump({"pretrain": {"mae": "x.yaml"}, "tasks": [task]}))
    with pytest.raises(ValueError, match="metric 'auroc' is not one of mae, rmse"):
        load_config(path)
    path.write_text(yaml.safe_dump({"pretrain": {"mae": "x.yaml"}, "tasks": [dict(task, metric="mae")], "budgets": [0, 1]}))
    with pytest.raises(ValueError, match=r"label budgets must be in \(0, 1\], got \[0\]"):
        load_config(path)


def test_command_reports_a_bad_config_without_a_traceback(tmp_path, capsys):
    """Until `benchmark` is registered in ichor.cli, drive the subcommand module directly."""
    import argparse

    from ichor import benchmark_cli

    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"pretrain": {"mae": "x.yaml"}, "task": []}))
    parser = argparse.ArgumentParser()
    benchmark_cli.add_arguments(parser)
    assert benchmark_cli.run(parser.parse_args(["--config", str(path), "--out", str(tmp_path / "out")])) == 1
    assert "typo.yaml: unknown key(s) task; allowed:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_label_budgets_are_nested_stratified_and_keep_every_class():
    from ichor.benchmark.run import budget_fold
    from ichor.downstream.cv import subject_folds

    rows = pd.DataFrame({"subject": [f"P{i:02d}" for i in range(60)], "study": "s", "diagnosis": ["CN", "AD", "FTD"] * 20})
    fold = subject_folds(rows, "diagnosis", folds=3)[0]
    trained = {b: set(budget_fold(fold, rows, "diagnosis", b).splits.query("split == 'train'")["subject"])
               for b in (0.05, 0.5, 1.0)}
    assert trained[0.05] < trained[0.5] < trained[1.0]  # a smaller budget is a subset, not a new draw
    assert len(trained[0.5]) == len(trained[1.0]) // 2
    labels = rows.set_index("subject")["diagnosis"]
    assert set(labels[list(trained[0.05])]) == {"CN", "AD", "FTD"}  # at least one subject per class


@pytest.mark.parametrize("name", ["benchmark_demo.yaml", "benchmark_full.yaml"])
def test_shipped_benchmark_configs_load_and_point_at_shipped_configs(name):
    """The shipped benchmark configs parse, and every config they name is one the repo ships."""
    config = load_config(CONFIGS / name)
    named = [Path(spec if isinstance(spec, str) else spec["config"] if isinstance(spec, dict) else spec.config)
             for spec in config.pretrain.values()]
    named += [Path(p) for task in config.tasks for p in (task.probe_config, task.finetune_config)]
    assert config.tasks and named
    for path in named:
        assert (CONFIGS.parent / path).is_file(), path
