"""CBFDataModule on a synthetic multi-study dataset: batches, grid alignment, normalization, splits, augmentation."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule

from ichor.data import Augmentation, CBFDataModule
from ichor.data.augment import LEFT_RIGHT_DIM, on_chosen

SMALL = {"spacing": 4.0, "shape": (48, 56, 48), "num_workers": 0, "progress": False}
NO_AUGMENT = {**SMALL, "augment": None}


@pytest.fixture(scope="module")
def manifests(synthetic_manifests):
    """The session's synthetic data (4 studies x 4 subjects, seed 0), as strings."""
    return [str(path) for path in synthetic_manifests]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def datamodule(manifests, cache_dir, **kwargs) -> CBFDataModule:
    dm = CBFDataModule(manifests, cache_dir=cache_dir, **{**NO_AUGMENT, "batch_size": 4, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def train_batches(dm: CBFDataModule):
    """Training batches as a Trainer hands them to the model: finished by the datamodule after transfer."""
    for batch in dm.train_dataloader():
        yield dm.on_after_batch_transfer(batch, 0)


def all_scans(dm: CBFDataModule) -> dict:
    """Every scan (predict split) in one batch."""
    dataset = dm.datasets["predict"]
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


def test_batches_have_images_masks_and_manifest_fields(manifests, cache_dir):
    dm = datamodule(manifests, cache_dir)
    raw = next(iter(dm.train_dataloader()))
    assert raw["image"].dtype == torch.float16 and "mask" not in raw  # handed over as cached, finished on the device
    batch = dm.on_after_batch_transfer(raw, 0)
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 1, 48, 56, 48)
    assert batch["mask"].dtype == torch.bool and batch["mask"].shape == (4, 1, 48, 56, 48)
    for field in ("subject", "session", "study", "site", "path", "manifest"):
        assert isinstance(batch[field], list) and len(batch[field]) == 4
    assert batch["row"].dtype == torch.int64
    numeric = [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dtype == torch.float32 and v.ndim == 1]
    assert "age" in numeric  # numeric manifest columns come as tensors
    assert (batch["image"][~batch["mask"]] == 0).all()
    assert len(dm.datasets["predict"]) == 16
    summary = dm.data_summary()
    assert (
        summary["scans"] == 16
        and summary["skipped"] == 0
        and set(summary["per_study"]) == {"study-01", "study-02", "study-03", "study-04"}
    )
    settings = json.loads(json.dumps(dm.harmonisation_settings()))
    assert settings["shape"] == [48, 56, 48] and settings["spacing"] == [4.0, 4.0, 4.0]
    assert settings["orientation"] == "RAS" and settings["normalization"] == "scale"


def test_studies_with_different_geometry_are_aligned_on_one_grid(manifests, cache_dir):
    """Synthetic studies differ in orientation, voxel size and FOV; after harmonisation brains overlap."""
    scans = all_scans(datamodule(manifests, cache_dir))
    masks = scans["mask"][:, 0].numpy()
    studies = np.array(scans["study"])
    middle = (np.array(masks.shape[1:]) - 1) / 2
    study_masks = []
    for study in np.unique(studies):
        for mask in masks[studies == study]:
            assert np.all(np.abs(np.argwhere(mask).mean(0) - middle) <= 1.0), study  # centred brains
        study_masks.append(masks[studies == study].mean(0) >= 0.5)
    for other in study_masks[1:]:
        dice = 2 * (study_masks[0] & other).sum() / (study_masks[0].sum() + other.sum())
        assert dice > 0.9


def test_normalizations(manifests, cache_dir):
    raw = all_scans(datamodule(manifests, cache_dir, normalization="none"))
    scaled = all_scans(datamodule(manifests, cache_dir, normalization="scale", cbf_scale=100.0))
    zscored = all_scans(datamodule(manifests, cache_dir, normalization="zscore"))
    relative = all_scans(datamodule(manifests, cache_dir, normalization="relative"))
    brain = raw["mask"]
    assert raw["image"][brain].median() > 10  # mL/100g/min
    torch.testing.assert_close(scaled["image"], (raw["image"] / 100).clamp(-1, 1))
    for batch in (raw, scaled, zscored, relative):  # the global level, whatever the input shows
        torch.testing.assert_close(batch["global_cbf"], raw["global_cbf"])
    for image, mask, relative_image, (log_mean, log_std) in zip(
        raw["image"], brain, relative["image"], raw["global_cbf"]
    ):
        mean = image[mask].mean()
        torch.testing.assert_close(log_mean.exp(), mean, rtol=2e-3, atol=0)  # log brain-mean CBF
        torch.testing.assert_close(log_std.exp(), image[mask].std(), rtol=2e-2, atol=0)
        torch.testing.assert_close(relative_image, (image / mean).clamp(-2, 4), rtol=2e-3, atol=2e-3)
        assert abs(relative_image[mask].mean() - 1) < 0.02  # 1 = the scan's brain mean
    for image, mask in zip(zscored["image"], zscored["mask"]):
        assert abs(image[mask].mean()) < 0.02 and abs(image[mask].std() - 1) < 0.02
        assert (image[~mask] == 0).all()


def test_same_seed_same_split_and_same_batches(manifests, cache_dir, tmp_path):
    first = datamodule(manifests, cache_dir, seed=5, log_dir=str(tmp_path / "a"))
    second = datamodule(manifests, cache_dir, seed=5, log_dir=str(tmp_path / "b"))
    other = datamodule(manifests, cache_dir, seed=6, log_dir=str(tmp_path / "c"))
    assert first.rows["split"].equals(second.rows["split"])
    assert not first.rows["split"].equals(other.rows["split"])
    for a, b in zip(train_batches(first), train_batches(second)):
        assert a["subject"] == b["subject"] and torch.equal(a["image"], b["image"])
    table = pd.read_csv(tmp_path / "a" / "splits.csv")
    assert len(table) == 16 and table.groupby("subject")["split"].nunique().max() == 1


def test_held_out_study_is_wholly_test(manifests, cache_dir):
    dm = datamodule(manifests, cache_dir, test_studies=["study-03"], test_fraction=0.0, val_fraction=0.25)
    test_batch = next(iter(dm.test_dataloader()))
    assert set(test_batch["study"]) == {"study-03"} and len(dm.datasets["test"]) == 4
    assert dm.data_summary()["per_study"]["study-03"] == {"train": 0, "val": 0, "test": 4}


@pytest.mark.parametrize("transforms_on", ["device", "workers"])
def test_augmentation_only_in_training(manifests, cache_dir, transforms_on):
    strong = Augmentation(flip_p=1.0, intensity_p=1.0, noise_p=1.0)
    plain = datamodule(manifests, cache_dir, transforms_on=transforms_on)
    augmented = datamodule(manifests, cache_dir, augment=strong, transforms_on=transforms_on)
    for split in ("val", "test", "predict"):
        assert torch.equal(augmented.datasets[split][0]["image"], plain.datasets[split][0]["image"])
    item, original = next(train_batches(augmented)), next(train_batches(plain))
    assert not torch.equal(item["image"], original["image"])
    assert torch.equal(item["mask"], original["mask"].flip(2))  # the flip moved the mask too
    assert (item["image"][~item["mask"]] == 0).all()


def test_noise_changes_only_the_chosen_scans_inside_their_brain():
    """On a CPU noise is drawn for the chosen scans only: the others come back bit-identical, backgrounds stay 0."""
    generator = torch.Generator().manual_seed(3)
    masks = torch.zeros(16, 1, 6, 5, 4, dtype=torch.bool)
    masks[..., 1:5, 1:4, 1:3] = True
    images = masks * torch.rand(masks.shape, generator=generator)
    augment, state = Augmentation(flip_p=0, intensity_p=0, noise_p=0.5), generator.get_state()
    noisy, noisy_masks = augment(images, masks, torch.full((16,), 0.2), generator)
    changed = (noisy != images).flatten(1).any(dim=1)
    assert 0 < int(changed.sum()) < 16 and torch.equal(noisy_masks, masks)
    assert torch.equal(noisy[~changed], images[~changed]) and (noisy[~masks] == 0).all()
    # A caller that owns the batch (prepare_) gets the same values without a copy of it.
    same, _ = augment(images, masks, torch.full((16,), 0.2), generator.set_state(state), in_place=True)
    assert same is images and torch.equal(same, noisy)


def test_flip_of_chosen_scans_equals_the_batch_select():
    """The CPU path (indexing the chosen scans) gives exactly what the device path's select gives."""
    images = torch.rand(8, 1, 6, 5, 4)
    chosen = torch.tensor([True, False, True, True, False, False, True, False])
    selected = torch.where(chosen.view(-1, 1, 1, 1, 1), images.flip(LEFT_RIGHT_DIM), images)
    assert torch.equal(on_chosen(chosen, images, lambda scans, _: scans.flip(LEFT_RIGHT_DIM)), selected)


def test_flip_is_left_right_and_affine_moves_the_mask():
    mask = torch.zeros(1, 8, 6, 4, dtype=torch.bool)
    mask[:, :3] = True  # left part of the head (RAS axis 0 runs left -> right)
    image = mask.float() * 0.5
    level = torch.tensor([0.1])
    flipped, flipped_mask = Augmentation(flip_p=1, intensity_p=0, noise_p=0)(image[None], mask[None], level)
    flipped, flipped_mask = flipped[0], flipped_mask[0]
    assert flipped_mask[:, 5:].all() and not flipped_mask[:, :5].any() and torch.equal(flipped > 0, flipped_mask)
    torch.manual_seed(0)
    big = torch.zeros(1, 1, 20, 20, 20, dtype=torch.bool)
    big[..., 5:15, 5:15, 5:15] = True
    moved, moved_mask = Augmentation(flip_p=0, affine_p=1, intensity_p=0, noise_p=0, shift_voxels=3)(
        big * 0.5, big, level
    )
    assert abs(int(moved_mask.sum()) - 1000) < 250 and torch.allclose(moved[moved_mask], torch.tensor(0.5))


def test_configurable_from_yaml_like_the_lightning_cli():
    """The `data:` section of `ichor fit --config` (subclass mode: class_path + init_args)."""
    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    config = parser.parse_string(
        "data:\n  class_path: ichor.data.CBFDataModule\n  init_args:\n    manifests: [a.csv]\n    spacing: 4.0\n"
        "    shape: [48, 56, 48]\n    normalization: zscore\n    augment: {flip_p: 0.0, noise_p: 0.5}\n"
        "    on_bad_scan: skip\n    volume: mean\n"
    )
    dm = parser.instantiate(config).data
    assert isinstance(dm, CBFDataModule) and dm.settings.shape == (48, 56, 48)
    assert dm.augment == Augmentation(flip_p=0.0, noise_p=0.5)
    assert dm.harmonisation_settings()["normalization"] == "zscore" and dm.settings.volume == "mean"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"batch_size": 32, "drop_last": True}, "12 training scan(s) with batch_size 32 and drop_last"),
        ({"batch_size": 13, "drop_last": True}, "12 training scan(s) with batch_size 13 and drop_last"),
        ({"test_studies": ["study-01", "study-02", "study-03", "study-04"]}, "0 training scan(s) with batch_size 4"),
        ({"val_fraction": 0.0, "test_fraction": 0.0, "split_file": "nobody"}, "0 training scan(s)"),
    ],
    ids=["batch-over-split", "one-over", "all-held-out", "split-file-lists-nobody"],
)
def test_a_training_split_without_one_batch_is_refused_in_one_line(manifests, cache_dir, tmp_path, options, expected):
    if options.get("split_file") == "nobody":
        (tmp_path / "split.csv").write_text("subject,split\nnot-a-subject,train\n")
        options = {**options, "split_file": str(tmp_path / "split.csv")}
    dm = datamodule(manifests, cache_dir, **options)
    with pytest.raises(ValueError, match="^the training split gives no batch: ") as caught:
        dm.train_dataloader()
    message = str(caught.value)
    assert "\n" not in message
    assert expected in message and "scans per split: train " in message


@pytest.mark.parametrize("options", [{"batch_size": 32}, {"batch_size": 12, "drop_last": True}])
def test_a_training_split_of_at_least_one_batch_trains(manifests, cache_dir, options):
    dm = datamodule(manifests, cache_dir, **options)
    assert dm.data_summary()["per_split"]["train"] == 12
    assert len(list(dm.train_dataloader())) == 1
