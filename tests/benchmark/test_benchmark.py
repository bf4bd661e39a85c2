"""`ichor benchmark`: methods x modes x label budgets x folds, scratch and a regional-mean baseline."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import CONFIGS, check_benchmark_config

from ichor.benchmark import load_config, run_benchmark
from ichor.benchmark.baseline import scan_features
from ichor.data.manifest import read_manifests


@pytest.fixture(scope="module")
def pool_manifests(tmp_path_factory) -> list[Path]:
    """The unlabelled pre-training pool beside ``synthetic_manifests``: studies 5-6, other people."""
    from ichor.synth import generate_dataset

    out = tmp_path_factory.mktemp("pool") / "data"
    return generate_dataset(out, 2, 4, seed=0, workers=2, progress=False, first_study=5)


@pytest.fixture(scope="module")
def selection_manifests(tmp_path_factory) -> list[Path]:
    """The selection cohort beside them: studies 7-9, other people again, labelled."""
    from ichor.synth import generate_dataset

    out = tmp_path_factory.mktemp("selection") / "data"
    return generate_dataset(out, 3, 4, seed=0, workers=2, progress=False, first_study=7)


def small_benchmark(tmp_path, manifests, pool, selection=None) -> dict:
    """The shipped demo benchmark, test-sized: 4 studies of 4 subjects, micro ViTs, 1 epoch a stage.

    Its methods, modes, budgets and leave-one-study-out folds are the shipped file's; of its
    tasks, one diagnosis against controls (the other two differ only in ``target_values``) and
    the quality rating (regression). Each study has one subject of each diagnosis, so a held-out
    study tests one CN and one AD scan, and the other three studies give two of each to train
    (and one of each to validate): half the labels (budget 0.5) keep one of each.
    """
    shipped = load_config(CONFIGS / "benchmark_demo.yaml")
    assert shipped.pretrain_overrides["data"]["init_args"]["manifests"] == ["data_manifests/pool"]  # a pool
    repo = CONFIGS.parent  # the shipped file's paths are relative to the repository; the test runs elsewhere
    tasks = [
        dict(task.__dict__, config=[str(repo / f) for f in task.config])
        for task in shipped.tasks
        if task.name in ("AD", "quality")
    ]
    small = {  # every run on the small grid, in one process
        "cache_dir": str(tmp_path / "cache"),
        "spacing": 6.0,
        "shape": [32, 48, 32],
        "num_workers": 0,
        "batch_size": 2,
    }
    return {
        "pretrain": {
            method: {"config": [str(repo / f) for f in spec.config], "overrides": spec.overrides}
            for method, spec in shipped.pretrain.items()
        },
        "tasks": [dict(task, metric="mae") if task["head"] == "regression" else task for task in tasks],
        "budgets": [0.5, 1.0],
        "trained_budgets": [0.5],
        "seeds": 2,
        "trained_draws": 1,
        "selection": {"manifests": list(map(str, selection))} if selection else None,
        "pretrain_budget_minutes": 0.05,  # 3 s of pre-training each (or its 1 epoch cap, whichever first)
        "epochs": {"pretrain": 1, "pretrain_time_cap": 1, "finetune": 1, "scratch": 1},
        "pretrain_overrides": {
            "model": {"init_args": {"backbone": {"preset": "mae_vit_micro"}}},
            "data": {"init_args": {"manifests": list(map(str, pool))}},
        },
        "overrides": {
            "trainer": {**shipped.overrides["trainer"], "limit_train_batches": 2, "limit_val_batches": 2},
            "data": {
                "init_args": {**shipped.overrides["data"]["init_args"], "manifests": list(map(str, manifests)), **small}
            },
        },
    }


@pytest.mark.slow
def test_demo_benchmark_runs_every_method_mode_budget_and_held_out_study(
    tmp_path, monkeypatch, synthetic_manifests, pool_manifests, selection_manifests
):
    small = small_benchmark(tmp_path, synthetic_manifests, pool_manifests, selection_manifests)
    monkeypatch.chdir(tmp_path)  # the shipped configs write runs/ relative to the CWD
    out = tmp_path / "bench"
    cfg = load_config(CONFIGS / "benchmark_demo.yaml", small)
    assert cfg.compute == ["equal_time", "equal_epochs"] and len(cfg.probe) == 2  # the shipped rules
    run_benchmark(cfg, out)

    summary = pd.read_csv(out / "benchmark_summary.csv")
    methods = ("mae", "simclr", "genesis")
    probes = ("linear_probe (pooling brain_mean, blocks 2)", "linear_probe (pooling region, blocks 2)")
    linear = [(method, probe) for method in methods for probe in probes]
    linear += [("regional_mean", "baseline"), ("oracle", "oracle")]
    trained = [(method, "lora") for method in methods] + [("scratch", "scratch")]
    expected = {(task, *pair, budget) for task in ("AD", "quality") for budget in (0.5, 1.0) for pair in linear}
    expected |= {(task, *pair, 0.5) for task in ("AD", "quality") for pair in trained}  # trained_budgets
    keys = list(summary[["task", "method", "mode", "budget"]].itertuples(index=False, name=None))
    assert len(keys) == len(expected) and set(keys) == expected  # one row each
    linear_rows = summary["mode"].str.startswith("linear_probe") | summary["mode"].isin(["baseline", "oracle"])
    few = summary["budget"] == 0.5
    assert (summary.loc[linear_rows & few, "folds"] == 8).all()  # 4 held-out studies x 2 label draws
    assert (summary.loc[linear_rows & ~few, "folds"] == 4).all()  # all labels: one draw, the whole fold
    assert (summary.loc[~linear_rows, "folds"] == 4).all()  # one per held-out study, the first draw
    assert np.isfinite(summary["mean"]).all()
    assert set(summary.loc[summary["task"] == "AD", "metric"]) == {"auroc"}
    # Floor and ceiling: the gap closed is 0 at the floor and 1 at the ceiling.
    ends = summary[summary["method"].isin(["regional_mean", "oracle"])].set_index(["task", "method", "budget"])
    assert ends.xs("regional_mean", level="method")["gap_closed"].fillna(0).eq(0).all()
    assert np.allclose(ends.xs("oracle", level="method")["gap_closed"].dropna(), 1)
    assert set(pd.read_csv(out / "benchmark_ceiling.csv")["task"]) == {"AD", "quality"}

    # Modes were chosen on the selection cohort, which ran the same protocol (scratch has nothing to choose).
    chosen = pd.read_csv(out / "benchmark_chosen_modes.csv")
    picked = chosen[chosen["method"].isin(methods)]
    assert (picked["chosen_on"] == "selection cohort").all() and len(picked) == 2 * 2 * 3
    selection = pd.read_csv(out / "benchmark_selection_folds.csv")
    assert set(selection["fold"]) == {"study-07", "study-08", "study-09"} and "scratch" not in set(selection["method"])
    assert (summary.groupby(["task", "method", "budget"])["chosen"].sum() == 1).all()  # one chosen mode each

    # Leave-one-study-out: each fold tests one whole study, and trains on none of its subjects.
    folds = pd.read_csv(out / "benchmark_folds.csv")
    studies = {"study-01", "study-02", "study-03", "study-04"}
    assert set(folds["fold"]) == studies
    rows = read_manifests(synthetic_manifests).set_index("subject")
    for fold in studies:
        split = pd.read_csv(out / "AD/mae/lora/budget-0.5/draw-0" / fold / "split_file.csv").set_index("subject")
        split = split["split"]
        assert set(split[split == "test"].index) == set(
            rows.index[(rows["study"] == fold) & rows["diagnosis"].isin(["CN", "AD"])]
        )
        assert (rows.loc[split[split != "test"].index, "study"] != fold).all()
        assert set(rows.loc[split.index, "diagnosis"]) == {"CN", "AD"}  # target_values keeps AD and controls only

    # The label budget halves the training subjects; validation and test subjects stay the same.
    for method, mode in [("mae", probes[0]), ("regional_mean", "baseline")]:
        runs = summary[(summary["task"] == "AD") & (summary["method"] == method) & (summary["mode"] == mode)].set_index(
            "budget"
        )
        assert runs.loc[0.5, "n_train"] == runs.loc[1.0, "n_train"] / 2
    half = pd.read_csv(out / "AD/simclr/lora/budget-0.5/draw-0/study-02/split_file.csv")
    used = pd.read_csv(next((out / "AD/simclr/lora/budget-0.5/draw-0/study-02").rglob("splits.csv")))
    trained = set(used.loc[used["split"] == "train", "subject"])  # what the datamodule really trained on
    assert trained == set(half.loc[half["split"] == "train", "subject"])

    # Both compute rules pre-trained every method, and recorded what it cost and what the online probe saw.
    pretraining = pd.read_csv(out / "benchmark_pretraining.csv").set_index("method")
    assert set(pretraining.index) == set(methods) and (pretraining["compute"] == "equal_time").all()
    assert (pretraining["epochs"] >= 0).all() and (pretraining["minutes"] > 0).all()
    assert set(pretraining["stopped_by"]) <= {"clock", "max_epochs"}  # which limit ended each pre-training
    assert {"scans_per_s", "data_wait_fraction", "probe/auroc initial", "probe/auroc end", "probe/auroc change"} <= set(
        pretraining.columns
    )
    for rule in ("pretrain", "pretrain-equal-time"):
        for method in methods:
            assert (out / rule / method / "encoder/encoder.json").is_file()
            record = json.loads((out / rule / method / "online_probe.json").read_text())
            assert set(record) == {"initial", "latest", "change_sd", "reference"}
    assert (pd.read_csv(out / "benchmark_pretraining_equal_epochs.csv")["compute"] == "equal_epochs").all()
    second = pd.read_csv(out / "benchmark_summary_equal_epochs.csv")
    assert set(second["mode"]) == {*probes, "baseline", "oracle"}  # linear models only

    assert (out / "figures/AD.png").stat().st_size > 0 and (out / "figures/quality.png").stat().st_size > 0
    efficiency = pd.read_csv(out / "benchmark_label_efficiency.csv")
    assert (efficiency["low"] <= efficiency["mean"]).all() and (efficiency["mean"] <= efficiency["high"]).all()
    table = (out / "benchmark_summary.md").read_text()
    assert "## AD (auroc, mean ± std over held-out studies x 2 draws; Lightning runs x 1)" in table
    assert "## AD (auroc, mean ± std over held-out studies)" in table  # the second table: 1 draw, not the config's 2
    assert "| regional_mean | baseline |" in table and "## Paired differences" in table
    assert "# ICHOR benchmark: equal pre-training epochs" in table  # the second table
    paired = pd.read_csv(out / "benchmark_paired.csv")
    assert {"scratch (scratch)", "regional_mean (baseline)", "oracle (oracle)"} <= set(paired["versus"])
    assert paired["reference"].str.startswith("mae (").all() and set(paired["verdict"]) <= {"wins", "ties", "loses"}
    # Each linear model also ran on pooled subject folds (4, as many as studies): the site gap.
    gaps = pd.read_csv(out / "benchmark_site_gap.csv")
    assert set(zip(gaps["task"], gaps["method"], gaps["mode"], gaps["budget"])) == {
        key for key in expected if key[1:3] in linear
    }
    assert np.isfinite(gaps["mean_pooled"]).all() and "## Held-out study against pooled folds" in table

    # Run again into the same folder: nothing is pre-trained or fine-tuned again, the table is the same.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr("ichor.benchmark.run.run_fold", no_training)
    encoder_time = (out / "pretrain/mae/encoder/encoder.json").stat().st_mtime_ns
    again = run_benchmark(cfg, out)
    assert (out / "pretrain/mae/encoder/encoder.json").stat().st_mtime_ns == encoder_time
    pd.testing.assert_frame_equal(again, folds, check_dtype=False)


def test_budgets_per_class_keep_that_many_subjects_of_each_class_nested_across_budgets():
    from ichor.benchmark.run import budget_fold
    from ichor.downstream.cv import Fold

    subjects = [f"s{i:02d}" for i in range(40)]
    rows = pd.DataFrame({"subject": subjects, "diagnosis": ["CN"] * 30 + ["AD"] * 10})
    fold = Fold("f", pd.DataFrame({"subject": subjects, "split": ["train"] * 36 + ["test"] * 4}))
    picked = {}
    for budget in (2, 5, 1.0):
        kept = budget_fold(fold, rows, "diagnosis", budget, seed=3).splits
        train = rows.set_index("subject").loc[kept.loc[kept["split"] == "train", "subject"], "diagnosis"]
        picked[budget] = set(train.index)
        assert (kept["split"] == "test").sum() == 4  # test subjects stay
        if budget != 1.0:
            assert train.value_counts().to_dict() == {"CN": budget, "AD": budget}
    assert picked[2] < picked[5] < picked[1.0]
    with pytest.raises(ValueError, match="whole numbers >= 2 of subjects per class"):
        load_config(CONFIGS / "benchmark_demo.yaml", {"budgets": [2.5]})


def test_site_gap_compares_each_linear_model_with_its_pooled_folds_and_signs_lower_better_metrics():
    from dataclasses import replace

    from ichor.benchmark.report import site_gap_table, summary_table

    cfg = load_config(CONFIGS / "benchmark_demo.yaml")
    cfg.tasks = [replace(task, metric="mae") if task.name == "quality" else task for task in cfg.tasks]

    def runs(task, metric, scores):
        return pd.DataFrame(
            [
                {"task": task, "method": "mae", "mode": "linear_probe", "budget": 10, "fold": f"f{i}", "n_train": 20}
                | {f"test/{metric}": score}
                for i, score in enumerate(scores)
            ]
        )

    held_out = pd.concat([runs("AD", "auroc", [0.60, 0.70]), runs("quality", "mae", [0.30, 0.30])])
    pooled = pd.concat([runs("AD", "auroc", [0.80, 0.80]), runs("quality", "mae", [0.28, 0.28])])
    gaps = site_gap_table(summary_table(held_out, cfg), pooled, cfg).set_index("task")
    assert gaps.loc["AD", "gap"] == pytest.approx(-0.15) and not gaps.loc["AD", "within"]  # worse unseen
    assert gaps.loc["quality", "gap"] == pytest.approx(-0.02) and gaps.loc["quality", "within"]  # error up 0.02
    assert site_gap_table(summary_table(held_out, cfg), pd.DataFrame(), cfg).empty  # no held-out studies


def test_budget_labels_read_as_subjects_per_class_or_a_share_of_the_labels():
    from ichor.benchmark.report import budget_label

    assert [budget_label(b) for b in (10, 0.25, 1.0)] == ["10 per class", "25 % of labels", "all labels"]


def test_probe_features_must_cover_every_scan(monkeypatch):
    """A scan the encoder could not embed stops the benchmark, naming its manifest row and file."""
    from types import SimpleNamespace

    from ichor.benchmark.run import encoder_features

    embedded = pd.DataFrame(
        {"subject": ["a"], "path": ["/d/a.nii.gz"], "log_brain_mean": [3.9], "log_brain_std": [2.5]}
        | {"f000": [0.1], "f001": [0.2]}
    )
    monkeypatch.setattr("ichor.evaluation.features.embed_scans", lambda *args, **kwargs: embedded)
    rows = pd.DataFrame({"path": ["/d/a.nii.gz", "/d/b.nii.gz"], "manifest": "study.csv", "row": [1, 2]})
    data = SimpleNamespace(manifests=["study.csv"], batch_size=2, cache_dir="c", num_workers=0, on_bad_scan="skip")
    model = SimpleNamespace(hparams=SimpleNamespace(pooling="brain_mean"))
    base = SimpleNamespace(datamodule=SimpleNamespace(hparams=data), model=model)
    with pytest.raises(ValueError, match=r"study.csv row 2 \(/d/b.nii.gz\): no encoder features \(1 scan"):
        encoder_features("encoder", rows, base, {})
    rows = rows.iloc[:1]
    assert encoder_features("encoder", rows, base, {}).loc["/d/a.nii.gz"].tolist() == [0.1, 0.2, 3.9, 2.5]


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
    task = {"name": "q", "target": "rating", "head": "regression", "metric": "auroc", "config": "f.yaml"}
    path.write_text(yaml.safe_dump({"pretrain": {"mae": "x.yaml"}, "tasks": [task]}))
    with pytest.raises(ValueError, match="metric 'auroc' is not one of mae, rmse"):
        load_config(path)
    path.write_text(
        yaml.safe_dump({"pretrain": {"mae": "x.yaml"}, "tasks": [dict(task, metric="mae")], "budgets": [0, 1]})
    )
    with pytest.raises(ValueError, match=r"label budgets are fractions in \(0, 1\] or whole numbers >= 2 .* got \[0\]"):
        load_config(path)


def test_overrides_are_mappings_and_tasks_may_come_from_a_shared_file(tmp_path):
    """Overrides are config keys (an old `--key=value` list is refused, saying so); a task without a
    config takes its head's entry of `task_configs`, and `tasks` may name a file shared by benchmarks."""
    path = tmp_path / "bench.yaml"
    task = {"name": "q", "target": "rating", "head": "regression", "metric": "mae"}
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump([task]))
    bench = {"pretrain": {"mae": ["common.yaml", "x.yaml"]}, "tasks": str(tmp_path / "tasks.yaml")}
    path.write_text(yaml.safe_dump({**bench, "overrides": ["--trainer.max_epochs=5"]}))
    with pytest.raises(ValueError, match="overrides are a mapping of config keys.*not --key=value strings"):
        load_config(path)
    path.write_text(yaml.safe_dump(bench))
    with pytest.raises(ValueError, match="task 'q' names no config, nor does task_configs.regression"):
        load_config(path)
    path.write_text(yaml.safe_dump({**bench, "task_configs": {"regression": ["common.yaml", "q.yaml"]}}))
    cfg = load_config(path)
    assert cfg.tasks[0].config == ["common.yaml", "q.yaml"] and cfg.pretrain["mae"].config == ["common.yaml", "x.yaml"]


def test_command_reports_a_bad_config_without_a_traceback(tmp_path, capsys):
    """Until `benchmark` is registered in ichor.cli, drive the subcommand module directly."""
    import argparse

    from ichor.cli import benchmark as benchmark_cli

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

    rows = pd.DataFrame(
        {"subject": [f"P{i:02d}" for i in range(60)], "study": "s", "diagnosis": ["CN", "AD", "FTD"] * 20}
    )
    fold = subject_folds(rows, "diagnosis", folds=3)[0]
    trained = {
        b: set(budget_fold(fold, rows, "diagnosis", b).splits.query("split == 'train'")["subject"])
        for b in (0.05, 0.5, 1.0)
    }
    assert trained[0.05] < trained[0.5] < trained[1.0]  # a smaller budget is a subset, not a new draw
    assert len(trained[0.5]) == len(trained[1.0]) // 2
    labels = rows.set_index("subject")["diagnosis"]
    assert set(labels[list(trained[0.05])]) == {"CN", "AD", "FTD"}  # at least one subject per class


@pytest.mark.parametrize("name", ["benchmark_demo.yaml", "benchmark_paper.yaml", "benchmark_ablation.yaml"])
def test_shipped_benchmark_configs_load_and_point_at_shipped_configs(name):
    """The shipped benchmark configs parse, and every config they name is one the repo ships.

    tests/cli/test_configs.py runs the same check on every benchmark config it finds."""
    check_benchmark_config(CONFIGS / name)
