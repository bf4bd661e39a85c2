"""The data contract: manifest columns, labelled rows and label strata, the same for every reader and writer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ichor.cli import main
from ichor.data.manifest import ManifestError, read_manifests
from ichor.data.schema import (
    COLUMN_NAMES,
    NUMERIC_COLUMNS,
    REQUIRED_COLUMNS,
    label_strata,
    labelled_rows,
    manifest_columns,
)
from ichor.data.splits import assign_splits
from ichor.downstream.cv import subject_folds


@pytest.mark.parametrize("missing", REQUIRED_COLUMNS)
def test_a_manifest_without_a_required_column_is_refused_naming_file_and_column(tmp_path, missing):
    row = {"subject": "01", "path": "sub-01_cbf.nii.gz", "study": "study-01", "age": "70"}
    manifest = tmp_path / "study-01.csv"
    pd.DataFrame([row]).drop(columns=missing).to_csv(manifest, index=False)
    with pytest.raises(ManifestError, match=f"{manifest}: missing required column\\(s\\) {missing} "):
        read_manifests([manifest])


def test_synth_writes_the_schemas_columns_in_its_order_and_they_read_back_typed(tmp_path):
    from ichor.synth import generate_dataset

    manifests = generate_dataset(tmp_path, n_studies=2, subjects_per_study=3, progress=False, manifests_only=True)
    header = list(pd.read_csv(manifests[0], nrows=0).columns)
    assert header[: len(COLUMN_NAMES)] == list(COLUMN_NAMES) and header == manifest_columns(header)
    rows = read_manifests(manifests)  # passes the schema's checks
    assert len(rows) == 6
    assert all(rows[column].dtype == float for column in NUMERIC_COLUMNS)
    assert rows["subject"].map(type).eq(str).all()  # text stays text


def test_manifest_check_help_lists_the_schemas_columns(capsys):
    with pytest.raises(SystemExit):
        main(["manifest", "check", "--help"])
    text = capsys.readouterr().out
    assert "  subject         text, required: participant label" in text
    assert all(f"\n  {name} " in text for name in COLUMN_NAMES)


def test_manifest_columns_put_the_schemas_first_then_labels_as_given():
    assert manifest_columns(["rating", "csf", "path", "diagnosis", "subject"]) == [
        "subject",
        "path",
        "csf",
        "rating",
        "diagnosis",
    ]


def labelled_table() -> pd.DataFrame:
    """Two scans per subject; subject P00 unlabelled (empty), P01 blank, P02 missing; the rest AD/CN/FTD."""
    labels = ["", "  ", None, *(["AD", "CN", "FTD"] * 7)]
    return pd.DataFrame(
        [
            {"subject": f"P{i:02d}", "session": session, "study": f"study-{i % 2}", "diagnosis": label}
            for i, label in enumerate(labels)
            for session in ("1", "2")
        ]
    )


def test_one_labelled_rows_contract_for_split_and_cross_validation():
    rows = labelled_table()
    labelled = labelled_rows(rows, "diagnosis")
    assert labelled.index.equals(rows.index) and labelled.dtype == bool
    assert set(rows.loc[~labelled, "subject"]) == {"P00", "P01", "P02"}
    two_classes = labelled_rows(rows, "diagnosis", ["CN", "AD"])
    assert set(rows.loc[two_classes, "diagnosis"]) == {"AD", "CN"}
    folds = subject_folds(rows, "diagnosis", folds=3)  # cross-validation keeps exactly these rows' subjects
    assert set(folds[0].splits["subject"]) == set(rows.loc[labelled, "subject"])
    with pytest.raises(ValueError, match="target column 'grade' is not in the manifests"):
        labelled_rows(rows, "grade")


def test_a_numeric_target_is_stratified_by_quartile_in_the_split_and_in_the_folds():
    """24 subjects of one study with 24 ages: quartiles of 6; the split and every fold take each quartile alike."""
    rows = pd.DataFrame({"subject": [f"P{i:02d}" for i in range(24)], "study": "study-01", "age": 50.0 + np.arange(24)})
    strata = label_strata(rows["age"])
    assert strata.nunique() == 4 and (strata.value_counts() == 6).all()
    split = assign_splits(rows, val_fraction=0.0, test_fraction=1 / 6, seed=0, stratify_by="age")
    assert (strata[split == "test"].value_counts() == 1).all() and strata[split == "test"].nunique() == 4
    for fold in subject_folds(rows, "age", folds=3, seed=0):
        tested = strata[rows["subject"].isin(fold.splits.loc[fold.splits["split"] == "test", "subject"])]
        assert (tested.value_counts() == 2).all() and tested.nunique() == 4  # 8 test subjects: 2 per quartile
