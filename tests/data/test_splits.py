"""Subject-level, stratified, deterministic splits with held-out studies and sites."""

import numpy as np
import pandas as pd
import pytest

from ichor.data.splits import assign_splits, write_splits


def scans(n_studies=3, subjects=20, sessions=2) -> pd.DataFrame:
    """Rows like read_manifests returns: several sessions per subject, a label, two sites per study."""
    rows = []
    for s in range(n_studies):
        for j in range(subjects):
            for k in range(sessions):
                rows.append(
                    {
                        "subject": f"S{s}P{j:03d}",
                        "session": f"ses-{k}",
                        "study": f"study-{s + 1:02d}",
                        "site": f"site-{s}{j % 2}",
                        "diagnosis": "AD" if j % 4 == 0 else "CN",
                        "manifest": f"study-{s + 1:02d}.csv",
                        "row": j * sessions + k + 1,
                        "path": f"/data/S{s}P{j:03d}_{k}.nii.gz",
                    }
                )
    return pd.DataFrame(rows)


def test_no_subject_in_two_splits_and_fractions_per_study():
    rows = scans()
    split = assign_splits(rows, val_fraction=0.2, test_fraction=0.1, seed=0)
    assert split.groupby(rows["subject"]).nunique().max() == 1
    per_subject = split.groupby(rows["subject"]).first()
    study = rows.groupby("subject")["study"].first()
    counts = per_subject.groupby(study).value_counts().unstack()
    # 20 subjects per study: 2 test, 4 val, 14 train in each study (stratified), not just overall.
    assert (counts["test"] == 2).all() and (counts["val"] == 4).all() and (counts["train"] == 14).all()


def test_same_seed_same_split_other_seed_other_split():
    rows = scans()
    first = assign_splits(rows, 0.2, 0.1, seed=3)
    assert first.equals(assign_splits(rows.copy(), 0.2, 0.1, seed=3))
    assert not first.equals(assign_splits(rows, 0.2, 0.1, seed=4))


def test_held_out_studies_and_sites_go_wholly_to_test():
    rows = scans()
    split = assign_splits(rows, 0.2, 0.0, seed=0, test_studies=["study-02"], test_sites=["site-00"])
    held = (rows["study"] == "study-02") | (rows["site"] == "site-00")
    assert (split[held] == "test").all()
    assert (split[~held] != "test").all()  # test_fraction 0: nothing else is test


def test_stratified_by_label_keeps_label_balance():
    rows = scans(n_studies=1, subjects=40, sessions=1)
    split = assign_splits(rows, 0.25, 0.25, seed=1, stratify_by="diagnosis")
    # 10 AD and 30 CN subjects: a quarter of each in val and in test.
    table = pd.crosstab(split, rows["diagnosis"])
    for label, subjects in (("AD", 10), ("CN", 30)):
        for name in ("val", "test"):
            assert abs(table.loc[name, label] - subjects / 4) <= 1, (name, label, table)


@pytest.mark.parametrize(
    ("stratify_by", "val", "test"),
    [
        ("diagnosis", ["S0P003", "S0P007", "S1P002", "S1P003"], ["S0P004", "S0P006", "S1P004", "S1P006"]),
        ("age", ["S0P001", "S0P004", "S1P002", "S1P006"], ["S0P002", "S0P007", "S1P000", "S1P007"]),  # by quartile
    ],
)
def test_a_seeds_split_stays_the_same_across_versions(stratify_by, val, test):
    """A published result names its seed: the same manifests and seed must give the same subjects, release after release."""
    rows = scans(n_studies=2, subjects=8, sessions=1).assign(age=lambda table: 40.0 + 1.5 * np.arange(len(table)))
    split = assign_splits(rows, 0.25, 0.25, 0, stratify_by=stratify_by)
    assert sorted(rows.loc[split == "val", "subject"]) == val and sorted(rows.loc[split == "test", "subject"]) == test


def test_unknown_held_out_study_or_label_column_is_an_error():
    rows = scans()
    with pytest.raises(ValueError, match="study-99"):
        assign_splits(rows, 0.1, 0.1, 0, test_studies=["study-99"])
    with pytest.raises(ValueError, match="severity"):
        assign_splits(rows, 0.1, 0.1, 0, stratify_by="severity")


def test_split_table_has_one_line_per_scan_for_audit(tmp_path):
    rows = scans(n_studies=1, subjects=5)
    path = write_splits(rows, assign_splits(rows, 0.2, 0.2, seed=0), tmp_path / "logs" / "splits.csv")
    table = pd.read_csv(path)
    assert list(table.columns) == ["subject", "session", "study", "site", "split", "manifest", "row", "path"]
    assert len(table) == len(rows) and set(table["split"]) <= {"train", "val", "test"}
