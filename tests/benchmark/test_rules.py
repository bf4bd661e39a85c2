"""The benchmark's rules: modes chosen on the selection cohort, floor and ceiling, equal compute,
intervals by bootstrap over studies and draws, and the shipped configs that follow them."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import CONFIGS

from ichor.benchmark import load_config

PROBE = "linear_probe (pooling brain_mean, blocks 2)"


def fold_rows(task: str, scores: dict[tuple[str, str], list[list[float]]], metric: str = "auroc") -> list[dict]:
    """Per-fold rows at 10 per class: (method, mode) -> scores[held-out study][draw]."""
    return [
        dict(task=task, method=method, mode=mode, budget=10, fold=f"study-{i}", seed=seed, n_train=20)
        | {f"test/{metric}": score}
        for (method, mode), grid in scores.items()
        for i, draws in enumerate(grid)
        for seed, score in enumerate(draws)
    ]


def test_paired_differences_call_a_win_only_when_the_bootstrap_interval_excludes_zero():
    from ichor.benchmark.choice import chosen_modes
    from ichor.benchmark.report import paired_differences

    cfg = load_config(CONFIGS / "benchmark_demo.yaml", {"selection": None})
    ours = [[0.80, 0.81, 0.79], [0.82, 0.80, 0.83], [0.81, 0.82, 0.80], [0.79, 0.80, 0.81]]
    behind = [[score - 0.10 + 0.01 * (i % 2) for score in draws] for i, draws in enumerate(ours)]
    noisy = [[0.60, 0.95, 0.70]] * 2 + [[0.95, 0.60, 0.90]] * 2
    scores = {("mae", PROBE): ours, ("scratch", "scratch"): behind, ("simclr", PROBE): noisy}
    results = pd.DataFrame(fold_rows("AD", scores))
    chosen = chosen_modes(pd.DataFrame(), results, cfg)
    paired = paired_differences(results, chosen, cfg).set_index("versus")
    scratch = paired.loc["scratch (scratch)"]
    assert scratch["verdict"] == "wins" and scratch["pairs"] == 12 and 0 < scratch["low"] < scratch["high"]
    assert scratch["difference"] == pytest.approx(0.095)
    simclr = paired.loc[f"simclr ({PROBE})"]
    assert simclr["verdict"] == "ties" and simclr["low"] < 0 < simclr["high"]  # ahead on average, not beyond
    pd.testing.assert_frame_equal(paired, paired_differences(results, chosen, cfg).set_index("versus"))  # seeded


def test_bootstrap_interval_resamples_studies_and_draws_and_is_seeded():
    from ichor.benchmark.intervals import bootstrap_interval, verdict

    index = pd.MultiIndex.from_product([["s1", "s2", "s3", "s4"], [0, 1, 2]], names=["fold", "seed"])
    steady = pd.Series(0.1 + 0.01 * (np.arange(12) % 3), index=index)
    low, high = bootstrap_interval(steady, seed=3)
    assert 0.09 < low <= steady.mean() <= high < 0.13 and (low, high) == bootstrap_interval(steady, seed=3)
    assert verdict(low, high) == "wins" and verdict(-high, -low) == "loses" and verdict(-0.1, 0.1) == "ties"
    one_study = pd.Series(
        [0.5, -0.4, 0.3], index=pd.MultiIndex.from_product([["s1"], [0, 1, 2]], names=["fold", "seed"])
    )
    low, high = bootstrap_interval(one_study)
    assert low < 0 < high  # one study, but its draws still vary
    assert np.isnan(bootstrap_interval(steady.iloc[:1])[0]) and verdict(np.nan, np.nan) == "ties"  # one pair: no win


def test_modes_are_chosen_on_the_selection_cohort_never_on_the_held_out_studies(tmp_path):
    """The held-out studies favour fine-tuning by far, the selection cohort the linear probe: the linear probe
    stands for MAE in the paired comparison and the figure; the table of every mode keeps fine-tuning, unmarked."""
    from ichor.benchmark.report import Outcome, write_report

    extra = {"probe": {"pooling": "brain_mean"}, "modes": ["linear_probe", "finetune"]}
    cfg = load_config(CONFIGS / "benchmark_demo.yaml", extra)
    probe, finetune, scratch = ("mae", "linear_probe"), ("mae", "finetune"), ("scratch", "scratch")
    held_out = pd.DataFrame(
        fold_rows("AD", {probe: [[0.60, 0.61]] * 4, finetune: [[0.95, 0.96]] * 4, scratch: [[0.55, 0.56]] * 4})
    )
    selection = pd.DataFrame(fold_rows("AD", {probe: [[0.80, 0.81]] * 2, finetune: [[0.60, 0.62]] * 2}))
    pretraining = pd.DataFrame([{"method": "mae", "compute": "equal_time"}])
    write_report({"equal_time": Outcome(held_out, selection, pd.DataFrame(), pretraining)}, cfg, tmp_path)

    chosen = pd.read_csv(tmp_path / "benchmark_chosen_modes.csv").set_index("method")
    assert chosen.loc["mae", "mode"] == "linear_probe" and chosen.loc["mae", "chosen_on"] == "selection cohort"
    assert chosen.loc["mae", "selection_score"] == pytest.approx(0.805)
    paired = pd.read_csv(tmp_path / "benchmark_paired.csv")
    assert list(paired["reference"]) == ["mae (linear_probe)"]
    assert paired["difference"].iloc[0] == pytest.approx(0.05)  # 0.605 - 0.555, not fine-tuning's 0.955 - 0.555
    summary = pd.read_csv(tmp_path / "benchmark_summary.csv").set_index(["method", "mode"])
    assert summary.loc[probe, "chosen"] and not summary.loc[finetune, "chosen"]  # every mode stays, marked
    text = (tmp_path / "benchmark_summary.md").read_text()
    assert "| mae | finetune | 0.955 ± 0.005 |" in text and "| mae | linear_probe | 0.605 ± 0.005 * |" in text
    efficiency = pd.read_csv(tmp_path / "benchmark_label_efficiency.csv").set_index("method")
    assert efficiency.loc["mae", "mean"] == pytest.approx(0.605)  # the figure draws the chosen mode too
    assert (tmp_path / "figures" / "AD.png").stat().st_size > 0

    # Without a selection cohort, the config's order decides: still never a held-out number.
    write_report({"equal_time": Outcome(held_out, pd.DataFrame(), pd.DataFrame(), pretraining)}, cfg, tmp_path)
    chosen = pd.read_csv(tmp_path / "benchmark_chosen_modes.csv").set_index("method")
    assert chosen.loc["mae", "mode"] == "linear_probe" and chosen.loc["mae", "chosen_on"] == "declared order"


def test_every_row_reports_the_share_of_the_floor_to_ceiling_gap_it_closes_and_low_ceilings_are_flagged():
    from ichor.benchmark.report import ceiling_markdown, ceiling_table, with_gap_closed

    def row(task, method, mode, budget, mean, metric="auroc"):
        return dict(task=task, method=method, mode=mode, budget=budget, metric=metric, mean=mean, std=0.01)

    summary = pd.DataFrame(
        [
            row("AD", "regional_mean", "baseline", 10, 0.60),
            row("AD", "oracle", "oracle", 10, 0.90),
            row("AD", "mae", "linear_probe", 10, 0.75),
            row("AD", "regional_mean", "baseline", 1.0, 0.62),
            row("AD", "oracle", "oracle", 1.0, 0.95),
            row("FTD", "regional_mean", "baseline", 1.0, 0.50),
            row("FTD", "oracle", "oracle", 1.0, 0.70),
            row("FTD", "mae", "linear_probe", 1.0, 0.45),
            row("quality", "regional_mean", "baseline", 1.0, 0.20, "pearson"),
            row("quality", "oracle", "oracle", 1.0, 0.80, "pearson"),
        ]
    )
    gaps = with_gap_closed(summary).set_index(["task", "method", "budget"])["gap_closed"]
    assert gaps["AD", "mae", 10] == pytest.approx(0.5) and gaps["FTD", "mae", 1.0] == pytest.approx(-0.25)
    assert gaps["AD", "oracle", 1.0] == pytest.approx(1.0) and gaps["AD", "regional_mean", 1.0] == 0
    ceilings = ceiling_table(summary)
    assert list(ceilings["flagged"]) == [False, True, False]  # FTD's ceiling 0.70 < 0.75; quality's r 0.8 >= 0.5
    assert ceilings.set_index("task").loc["AD", "ceiling"] == 0.95  # read at all labels
    assert "| FTD | auroc | 0.500 | 0.700 | FLAGGED: ceiling below 0.75" in ceiling_markdown(ceilings)


def test_pretraining_table_shows_cost_and_the_online_probe_at_start_and_end_beside_the_chosen_modes_metric(tmp_path):
    """Per method: epochs, minutes, scans/s and data wait; each probe scalar at initialisation, end and their
    change; then per task the chosen mode's metric at the fewest labels (not the best held-out mode)."""
    from ichor.benchmark.pretraining import COMPUTE_FILE, ONLINE_PROBE_FILE, pretraining_records
    from ichor.benchmark.report import pretraining_markdown, pretraining_table

    folder = tmp_path / "pretrain-equal-time/mae"
    folder.mkdir(parents=True)
    probe = {
        "initial": {"probe/auroc": 0.58, "probe/rankme": 4.0},
        "latest": {"probe/auroc": 0.71, "probe/auroc_sd": 0.02, "probe/rankme": 9.0},  # the _sd: not a column
        "change_sd": {"probe/auroc": 0.03},
        "reference": {"probe/auroc_global_cbf": 0.62},  # the label probe on the global CBF scalars alone
    }
    (folder / ONLINE_PROBE_FILE).write_text(json.dumps(probe))
    cost = {"epochs": 4, "steps": 80, "minutes": 2.5, "scans_per_s": 150.0, "data_wait_fraction": 0.04}
    (folder / COMPUTE_FILE).write_text(json.dumps(cost))
    records = pretraining_records(tmp_path, ["mae", "simclr"], "equal_time")  # simclr recorded nothing
    summary = pd.DataFrame(
        [
            dict(task="AD", method="mae", mode="linear_probe", budget=10, metric="auroc", mean=0.70, std=0.05),
            dict(task="AD", method="mae", mode="finetune", budget=10, metric="auroc", mean=0.75, std=0.04),
            dict(task="AD", method="mae", mode="linear_probe", budget=1.0, metric="auroc", mean=0.90, std=0.01),
        ]
    ).assign(chosen=[True, False, True])
    table = pretraining_table(summary, records).set_index("method")
    assert table.loc["mae", "epochs"] == 4 and table.loc["mae", "data_wait_fraction"] == 0.04
    assert table.loc["mae", "probe/auroc change"] == pytest.approx(0.13) and table.loc["mae", "probe/rankme end"] == 9
    assert table.loc["mae", "AD auroc (10 per class)"] == "0.700 ± 0.050 (linear probe)"  # chosen, not the best 0.75
    assert table.loc["mae", "probe/auroc_global_cbf"] == 0.62
    assert pd.isna(table.loc["simclr", "epochs"])
    text = pretraining_markdown(table.reset_index())
    assert (
        "| mae | equal_time | 4 | 80 | 2.500 | 150 | 0.040 | 0.580 | 0.710 | 0.130 | 0.030 | 4 | 9 | 5 | 0.620 |"
        in text
    )
    assert not any("auroc_sd" in column for column in table.columns)


def test_online_probe_record_keeps_the_spread_of_the_paired_change_over_label_draws():
    """Whether pre-training beat its own initialisation beyond the spread of the draws (issue 22's rule)."""
    from types import SimpleNamespace

    from ichor.benchmark.pretraining import online_probe_record
    from ichor.evaluation.online_probe import OnlineProbe

    probe = OnlineProbe(target="diagnosis", draws=3, every_n_epochs=None)
    probe.initial, probe.latest = {"probe/auroc": 0.5}, {"probe/auroc": 0.6}
    probe.initial_draws = [{"auroc": 0.50}, {"auroc": 0.45}, {"auroc": 0.55}]
    probe.latest_draws = [{"auroc": 0.60}, {"auroc": 0.65}, {"auroc": 0.55}]  # gains 0.10, 0.20, 0.00
    record = online_probe_record(SimpleNamespace(callbacks=[probe]))
    assert record["change_sd"]["probe/auroc"] == pytest.approx(0.1)
    assert record["latest"] == {"probe/auroc": 0.6}
    assert online_probe_record(SimpleNamespace(callbacks=[]))["change_sd"] == {}
    probe.reference = {"probe/auroc_global_cbf": 0.55}
    assert online_probe_record(SimpleNamespace(callbacks=[probe]))["reference"] == probe.reference


def test_equal_time_gives_every_method_the_same_wall_clock_limit_through_the_run_overrides():
    from ichor.benchmark.config import PretrainSpec
    from ichor.benchmark.pretraining import pretrain_run

    cfg = load_config(CONFIGS / "benchmark_demo.yaml", {"pretrain_budget_minutes": 2.5})
    spec = cfg.pretrain["simclr"]
    timed, epochs = pretrain_run(spec, cfg, "equal_time"), pretrain_run(spec, cfg, "equal_epochs")
    assert {"trainer": {"max_time": "00:00:02:30", "max_epochs": cfg.epochs["pretrain_time_cap"]}} in timed.overrides
    assert {"trainer": {"max_epochs": cfg.epochs["pretrain"]}} in epochs.overrides
    own = pretrain_run(PretrainSpec("x.yaml", {"trainer": {"max_time": "00:01:00:00"}}), cfg, "equal_time")
    assert own.overrides[-1] == {"trainer": {"max_time": "00:01:00:00"}}  # a method's own overrides come last
    with pytest.raises(ValueError, match="compute equal_time needs pretrain_budget_minutes"):
        load_config(CONFIGS / "benchmark_demo.yaml", {"pretrain_budget_minutes": None})
    with pytest.raises(ValueError, match="compute is a list of equal_time, equal_epochs"):
        load_config(CONFIGS / "benchmark_demo.yaml", {"compute": ["equal_flops"]})


def test_shipped_benchmarks_follow_the_rules():
    """Equal time first, modes chosen on a selection cohort, 20 linear draws and 3 Lightning draws, budgets of
    5, 10, 25 per class and all labels, AD against FTD as a task, quality a regression."""
    for name in ("benchmark_demo.yaml", "benchmark_paper.yaml"):
        cfg = load_config(CONFIGS / name)
        assert cfg.compute == ["equal_time", "equal_epochs"] and cfg.pretrain_budget_minutes
        assert cfg.selection and len(cfg.seeds) >= 20 and cfg.trained_draws >= 3
        assert cfg.budgets == [5, 10, 25, 1.0] and 10 in cfg.trained_budgets and len(cfg.probe) >= 2
        tasks = {task.name: task for task in cfg.tasks}
        assert tasks["AD_vs_FTD"].target_values == ["AD", "FTD"] and tasks["quality"].head == "regression"
    demo = load_config(CONFIGS / "benchmark_demo.yaml")
    assert demo.oracle and demo.selection == {"manifests": ["data_manifests/probe"]}  # `make probe-data`
    with pytest.raises(ValueError, match="trained_draws 3 not in 1..2"):
        load_config(CONFIGS / "benchmark_demo.yaml", {"seeds": 2})


def test_linear_models_fitted_in_worker_processes_score_as_in_the_benchmarks_own_process():
    from ichor.benchmark.config import TaskSpec
    from ichor.benchmark.run import linear_results
    from ichor.downstream.cv import subject_folds

    rng = np.random.default_rng(0)
    rows = pd.DataFrame(
        {"subject": [f"P{i:02d}" for i in range(24)], "study": "s", "diagnosis": ["CN", "AD"] * 12}
    ).assign(path=lambda r: "/d/" + r["subject"] + ".nii.gz")
    features = pd.DataFrame(rng.normal(size=(24, 5)), index=rows["path"]).add(
        (rows["diagnosis"] == "AD").to_numpy()[:, None]
    )
    task = TaskSpec("AD", "diagnosis", "classification", "auroc", config=["task.yaml"])
    budgets = {1.0: subject_folds(rows, "diagnosis", 3)}
    linear = {("mae", "linear_probe"): features, ("oracle", "oracle"): features.iloc[:, :2]}
    here = linear_results(linear, rows, budgets, task, seed=1)
    assert len(here) == 6 and {r["fold"] for r in here} == {f.name for f in budgets[1.0]}
    assert linear_results(linear, rows, budgets, task, seed=1, workers=2) == here


def test_throughput_is_the_median_over_steps_each_step_read_once():
    """Each step's train/scans_per_s and train/data_wait_fraction count once, read after the step set them."""
    from types import SimpleNamespace

    from ichor.benchmark.pretraining import ThroughputRecorder

    trainer = SimpleNamespace(current_epoch=2, global_step=4, max_epochs=8)
    module = SimpleNamespace(throughput={})
    recorder = ThroughputRecorder()
    for step, (speed, wait) in enumerate([(None, None), (100.0, 0.5), (300.0, 0.1), (200.0, 0.2)]):
        recorder.on_train_batch_start(trainer, module, None, step)
        if speed is not None:  # the first step of an epoch has no interval to time
            module.throughput = {"train/scans_per_s": speed, "train/data_wait_fraction": wait}
    recorder.on_train_end(trainer, module)
    recorder.on_train_end(trainer, module)  # nothing new: not counted again
    record = recorder.record(trainer)
    assert recorder.values["train/scans_per_s"] == [100.0, 300.0, 200.0]
    assert record["scans_per_s"] == 200.0 and record["data_wait_fraction"] == pytest.approx(0.2)
    assert (record["epochs"], record["steps"]) == (2, 4) and record["minutes"] >= 0
    assert record["stopped_by"] == "clock"  # 2 of 8 epochs: max_time (or an interruption) ended it
    trainer.current_epoch = 8  # the schedule ran out first: the run had less than the budget's compute
    assert recorder.record(trainer)["stopped_by"] == "max_epochs"
