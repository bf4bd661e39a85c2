"""Datamodule options of downstream tasks: target labels, explicit split files, resumable shuffles."""

import pandas as pd
import pytest

from ichor.data import Augmentation, CBFDataModule
from ichor.data.datamodule import EpochShuffle
from ichor.training.runs import IchorCLI

SMALL = {"spacing": 6.0, "shape": (32, 48, 32), "num_workers": 0, "progress": False, "augment": None}


def datamodule(manifests, tmp_path, **kwargs) -> CBFDataModule:
    dm = CBFDataModule(
        [str(m) for m in manifests], cache_dir=str(tmp_path / "cache"), log_dir=str(tmp_path), **{**SMALL, **kwargs}
    )
    dm.setup("fit")
    return dm


def with_missing_labels(manifests, tmp_path):
    """A copy of the first manifest with two diagnoses blanked (the input is left alone)."""
    table = pd.read_csv(manifests[0], dtype=str, keep_default_na=False)
    table.loc[[0, 1], "diagnosis"] = ""
    copy = manifests[0].parent / "partly_labelled.csv"
    table.to_csv(copy, index=False)
    return [copy, *manifests[1:]], set(table.loc[[0, 1], "subject"])


def test_rows_without_target_are_left_out_counted_and_still_predicted(synthetic_manifests, tmp_path):
    manifests, blank = with_missing_labels(synthetic_manifests, tmp_path)
    dm = datamodule(manifests, tmp_path, target="diagnosis")
    assert dm.data_summary()["unlabelled"] == 2
    splits = pd.read_csv(tmp_path / "splits.csv", dtype=str)
    assert set(splits.loc[splits["split"] == "unlabelled", "subject"]) == blank
    assert sum(len(dm.datasets[s]) for s in ("train", "val", "test")) == 14
    assert len(dm.datasets["predict"]) == 16


def test_target_values_pick_the_classes_of_a_binary_task(synthetic_manifests, tmp_path):
    dm = datamodule(synthetic_manifests, tmp_path, target="diagnosis", target_values=["CN", "AD"])
    rows = dm.rows[dm.rows["split"].isin(["train", "val", "test"])]
    assert set(rows["diagnosis"]) == {"CN", "AD"}
    assert dm.data_summary()["unlabelled"] == int((~dm.rows["diagnosis"].isin(["CN", "AD"])).sum()) > 0


def test_unknown_target_names_the_manifests(synthetic_manifests, tmp_path):
    with pytest.raises(ValueError, match="target column 'nope' is not in the manifests .*study-01"):
        datamodule(synthetic_manifests, tmp_path, target="nope")


def test_split_file_replaces_the_random_split(synthetic_manifests, tmp_path):
    subjects = sorted(pd.concat(pd.read_csv(m, dtype=str) for m in synthetic_manifests)["subject"])
    listed = subjects[:-3]
    table = pd.DataFrame(
        {"subject": listed, "split": ["train", "val", "test"] * (len(listed) // 3) + ["train"] * (len(listed) % 3)}
    )
    table.to_csv(tmp_path / "folds.csv", index=False)
    dm = datamodule(synthetic_manifests, tmp_path, split_file=str(tmp_path / "folds.csv"))
    got = dm.rows.set_index("subject")["split"]
    for subject, split in zip(table["subject"], table["split"]):
        assert got[subject] == split
    assert (got[subjects[-3:]] == "unlisted").all() and dm.data_summary()["unlisted"] == 3

    table.loc[0, "split"] = "holdout"
    table.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="bad.csv row 1: split 'holdout'"):
        datamodule(synthetic_manifests, tmp_path, split_file=str(tmp_path / "bad.csv"))


def test_shuffle_is_a_function_of_seed_and_epoch():
    data = list(range(50))
    first, again, other_seed = EpochShuffle(data, 3), EpochShuffle(data, 3), EpochShuffle(data, 4)
    first.set_epoch(5)
    again.set_epoch(4)
    list(again)  # drawing an epoch does not move the next one
    again.set_epoch(5)
    assert list(first) == list(again) != list(range(50))
    other_seed.set_epoch(5)
    assert list(other_seed) != list(first)
    first.set_epoch(6)
    assert list(first) != list(again)


def test_augmentation_from_a_config_is_an_augmentation(synthetic_manifests):
    """Under the Lightning CLI the datamodule receives the dataclass, not the config's dict."""
    cli = IchorCLI(
        args=[
            "--model=ichor.pretrain.MAEPretrainer",
            "--data=ichor.data.CBFDataModule",
            "--trainer.logger=false",
            f"--data.manifests=[{synthetic_manifests[0]}]",
            "--data.augment.flip_p=0.25",
        ],
        run=False,
    )
    assert isinstance(cli.datamodule.augment, Augmentation) and cli.datamodule.augment.flip_p == 0.25
