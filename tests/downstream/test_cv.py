"""Cross-validation folds: grouped by subject, stratified by the target, studies held out in turn."""

import numpy as np
import pandas as pd
import pytest
from helpers import config_args, tiny_task_args

from ichor.cli import main
from ichor.downstream.cv import markdown, subject_folds, summarise


def scan_rows(subjects: int = 24, studies: int = 3) -> pd.DataFrame:
    """Two scans (sessions) per subject; diagnosis 1:2 AD:CN; one subject without a label."""
    rows = []
    for i in range(subjects):
        label = "" if i == 0 else ("AD" if i % 3 == 0 else "CN")
        for session in ("1", "2"):
            rows.append(
                {
                    "subject": f"P{i:02d}",
                    "session": session,
                    "study": f"study-0{i % studies + 1}",
                    "diagnosis": label,
                    "age": 50.0 + i,
                }
            )
    return pd.DataFrame(rows)


def test_folds_never_share_a_subject_and_are_stratified():
    rows = scan_rows()
    folds = subject_folds(rows, "diagnosis", folds=4, seed=0)
    assert [f.name for f in folds] == ["fold-1", "fold-2", "fold-3", "fold-4"]
    tested = []
    for fold in folds:
        table = fold.splits
        assert table["subject"].is_unique  # one split per subject: its scans never straddle splits
        assert "P00" not in set(table["subject"])  # unlabelled subjects are left out
        assert set(table["split"]) == {"train", "val", "test"}
        test = set(table.loc[table["split"] == "test", "subject"])
        labels = rows.drop_duplicates("subject").set_index("subject")["diagnosis"]
        assert set(labels[list(test)]) == {"AD", "CN"}  # every class in every test fold
        tested += sorted(test)
    assert sorted(tested) == sorted(set(rows["subject"]) - {"P00"})  # each labelled subject tested exactly once
    again = subject_folds(rows, "diagnosis", folds=4, seed=0)
    assert all(a.splits.equals(b.splits) for a, b in zip(folds, again))  # reproducible


def test_by_study_holds_out_each_study_and_numeric_targets_work():
    rows = scan_rows()
    folds = subject_folds(rows, "diagnosis", by_study=True)
    assert [f.name for f in folds] == ["study-01", "study-02", "study-03"]
    study_of = rows.drop_duplicates("subject").set_index("subject")["study"]
    for fold in folds:
        test = fold.splits.loc[fold.splits["split"] == "test", "subject"]
        assert set(study_of[test]) == {fold.name}
        assert fold.name not in set(study_of[fold.splits.loc[fold.splits["split"] != "test", "subject"]])
    numeric = subject_folds(rows, "age", folds=3)
    assert sum(f.count("test") for f in numeric) == 24
    with pytest.raises(ValueError, match="30 folds need at least 30 labelled subjects, found 23"):
        subject_folds(rows, "diagnosis", folds=30)
    with pytest.raises(ValueError, match="'grade' is not in the manifests"):
        subject_folds(rows, "grade")


def test_summary_is_mean_and_std_over_folds():
    results = pd.DataFrame(
        {
            "fold": ["fold-1", "fold-2", "fold-3"],
            "n_test": [4, 4, 4],
            "test/auroc": [0.6, 0.8, 1.0],
            "test/loss": [0.5, 0.4, 0.3],
        }
    )
    summary = summarise(results).set_index("metric")
    assert summary.loc["auroc", "mean"] == pytest.approx(0.8) and summary.loc["auroc", "std"] == pytest.approx(0.2)
    assert summary.loc["loss", "count"] == 3 and "n_test" not in summary.index
    text = markdown(results, summarise(results))
    assert "| auroc | 0.8000 ± 0.2000 | 3 |" in text and "| fold-2 | 4 | 0.8000 | 0.4000 |" in text


@pytest.mark.slow
def test_cv_command_runs_every_fold(tmp_path, monkeypatch, downstream_manifests, tiny_encoder):
    monkeypatch.chdir(tmp_path)
    manifests, encoder = downstream_manifests, tiny_encoder  # 2 studies x 6 subjects
    out = tmp_path / "cv"
    status = main(
        [
            "cv",
            *config_args("probe_diagnosis.yaml"),
            "--folds",
            "3",
            "--out",
            str(out),
            "--",
            *tiny_task_args(encoder, manifests, tmp_path / "cache"),
        ]
    )
    assert status == 0
    folds = pd.read_csv(out / "cv_folds.csv")
    assert folds["fold"].tolist() == ["fold-1", "fold-2", "fold-3"] and folds["n_test"].sum() == 12
    assert np.isfinite(folds["test/balanced_accuracy"]).all()
    for k in (1, 2, 3):
        splits = pd.read_csv(out / f"fold-{k}" / "split_file.csv")
        logged = pd.read_csv(next((out / f"fold-{k}").rglob("splits.csv")))  # what the datamodule used
        assert dict(zip(logged["subject"], logged["split"])) == dict(zip(splits["subject"], splits["split"]))
    assert "± " in (out / "cv_summary.md").read_text()
