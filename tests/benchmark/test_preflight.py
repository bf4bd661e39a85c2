"""Every benchmark check that needs no encoder fails before pre-training, in one line naming the task and row."""

import logging
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import CONFIGS, make_dataset

from ichor.benchmark import load_config, run_benchmark
from ichor.benchmark.preflight import unmet_budget
from ichor.downstream.cv import Fold

REPO = CONFIGS.parent


def cohort(root: Path, prefix: str, seed: int) -> list[str]:
    """A small labelled cohort (CN and AD, a rating) whose subjects are ``prefix``-named: other people."""
    manifests = make_dataset(root, studies=2, subjects=4, seed=seed)
    for manifest in manifests:
        table = pd.read_csv(manifest)
        table["subject"] = prefix + table["subject"]
        table["study"] = prefix + table["study"]
        table["rating"] = [1.0, 2.0] * (len(table) // 2)  # two strata, so that folds can be stratified
        table.to_csv(manifest, index=False)
    return manifests


@pytest.fixture
def cohorts(tmp_path) -> dict[str, list[str]]:
    names = ("labelled", "pool", "selection")
    return {name: cohort(tmp_path / name, name, seed) for seed, name in enumerate(names)}


def benchmark(tmp_path: Path, cohorts: dict, tasks: list[dict] | None = None, **changes):
    """The shipped demo benchmark on ``cohorts`` (its AD and quality tasks unless ``tasks``)."""
    shipped = load_config(CONFIGS / "benchmark_demo.yaml")
    shipped_tasks = [
        dict(task.__dict__, config=[str(REPO / f) for f in task.config])
        for task in shipped.tasks
        if task.name in ("AD", "quality")
    ]
    data = {"manifests": cohorts["labelled"], "cache_dir": str(tmp_path / "cache")}
    config = {
        "pretrain": {
            method: {"config": [str(REPO / f) for f in spec.config]} for method, spec in shipped.pretrain.items()
        },
        "tasks": tasks or shipped_tasks,
        "selection": {"manifests": cohorts["selection"]},
        "pretrain_overrides": {"data": {"init_args": {"manifests": cohorts["pool"]}}},
        "overrides": {"data": {"init_args": data}},
    }
    return load_config(CONFIGS / "benchmark_demo.yaml", config | changes)


@pytest.fixture
def no_pretraining(monkeypatch):
    def pretrain(*args, **kwargs):
        raise AssertionError("pre-training started before the checks")

    monkeypatch.setattr("ichor.benchmark.run.pretrain", pretrain)


def refused(cfg, tmp_path) -> str:
    with pytest.raises(ValueError, match=r"^task |^the ") as error:
        run_benchmark(cfg, tmp_path / "out")
    message = str(error.value)
    assert "\n" not in message
    return message


def ad_task(**changes) -> list[dict]:
    task = {"name": "AD", "target": "diagnosis", "target_values": ["CN", "AD"], "head": "classification"}
    task |= {
        "metric": "auroc",
        "config": [str(CONFIGS / "common" / "demo.yaml"), str(CONFIGS / "finetune_diagnosis.yaml")],
    }
    return [task | changes]


def test_a_clean_benchmark_passes_the_checks_and_warns_of_budgets_it_cannot_meet(
    tmp_path, cohorts, no_pretraining, caplog
):
    caplog.set_level(logging.WARNING, logger="ichor.benchmark.preflight")
    with pytest.raises(AssertionError, match="pre-training started"):  # every check passed
        run_benchmark(benchmark(tmp_path, cohorts), tmp_path / "out")
    # 2 studies of 4 (2 CN, 2 AD): holding one out leaves at most 2 per class to train, not 5
    assert "task AD (held_out cohort): budget 5 per class is more than fold labelledstudy-01 has of" in caplog.text
    assert "budget_met: False" in caplog.text


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            ad_task(target="diagnosiss"),
            r"task AD \(selection cohort\): target column 'diagnosiss' is not in the manifests",
        ),
        (ad_task(target_values=["CN", "ADD"]), r"target_values ADD match no 'diagnosis' in .*values there: AD, CN"),
        (ad_task(target_values=["MCI"]), r"target_values MCI match no 'diagnosis'"),
        (ad_task(target_values=["CN"]), r"a classification needs two classes of 'diagnosis'"),
        (ad_task(target="sex"), r"no row of .* has a value of 'sex'"),
    ],
)
def test_a_task_that_cannot_run_is_refused_before_pretraining(tmp_path, cohorts, no_pretraining, task, message):
    if task[0]["target"] == "sex":  # a column present in every manifest, every value blank
        for manifest in cohorts["selection"]:
            pd.read_csv(manifest).assign(sex="").to_csv(manifest, index=False)
    assert re.search(message, refused(benchmark(tmp_path, cohorts, task), tmp_path))


def _copy_row(source: str, target: str, subject: str | None = None) -> None:
    """Append ``source``'s first row to ``target`` (its scan copied beside it; renamed to ``subject``)."""
    row = pd.read_csv(source).iloc[:1].copy()
    scan = Path(source).parent / row.loc[0, "path"]
    copy = Path(target).parent / f"copy-{scan.name}"
    shutil.copy(scan, copy)
    row["path"], row["study"] = copy.name, pd.read_csv(target).loc[0, "study"]
    if subject:
        row["subject"] = subject
    pd.concat([pd.read_csv(target), row]).to_csv(target, index=False)


@pytest.mark.parametrize(
    ("source", "target", "subject", "message"),
    [
        (
            "labelled",
            "pool",
            None,
            r"task AD \(held_out cohort\): 1 subject\(s\) are also in the mae pre-training pool",
        ),
        ("selection", "pool", None, r"task AD \(selection cohort\): 1 subject\(s\) are also in the mae pre-training"),
        ("labelled", "pool", "someone-else", r"labelled/study-01/manifest.csv row 1 .* is a byte-identical copy of"),
        ("labelled", "selection", None, r"the held_out cohort: 1 subject\(s\) are also in the selection cohort"),
        (
            "labelled",
            "selection",
            "x",
            r"the held_out cohort: .* is a byte-identical copy of .* in the selection cohort",
        ),
    ],
)
def test_a_pool_or_cohort_sharing_people_or_scans_is_refused_by_name(
    tmp_path, cohorts, no_pretraining, source, target, subject, message
):
    _copy_row(cohorts[source][0], cohorts[target][0], subject)
    found = refused(benchmark(tmp_path, cohorts), tmp_path)
    assert re.search(message, found), found


def test_an_unmet_budget_names_the_short_classes_and_results_say_so():
    subjects = [f"s{i}" for i in range(10)]
    rows = pd.DataFrame({"subject": subjects, "diagnosis": ["CN"] * 7 + ["AD"] * 3})
    fold = Fold("f", pd.DataFrame({"subject": subjects, "split": ["train"] * 9 + ["test"]}))
    assert unmet_budget(fold, rows, "diagnosis", 2) == ""
    assert unmet_budget(fold, rows, "diagnosis", 3) == "AD (2)"  # s7, s8 train; s9 tests
    assert unmet_budget(fold, rows, "diagnosis", 8) == "CN (7), AD (2)"
    assert unmet_budget(fold, rows, "diagnosis", 0.5) == "" and unmet_budget(fold, rows, "diagnosis", 1.0) == ""
