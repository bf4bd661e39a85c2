"""Probes of frozen features: the linear probe chooses its regularisation by inner CV."""

import numpy as np
import pandas as pd
import pytest

from ichor.evaluation.linear import ALPHA_GRID, C_GRID, fit_and_score, fit_probe, inner_splitter


def noisy_and_clean(classification: bool, seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Two training sets whose best strength differs: a weak signal in 200 noise features, and a clean one in 2."""
    rng = np.random.default_rng(seed)
    noisy = rng.standard_normal((60, 200))
    clean = rng.standard_normal((60, 2))
    signal_noisy = 0.3 * noisy[:, 0] + rng.standard_normal(60)
    signal_clean = clean[:, 0] + 0.05 * rng.standard_normal(60)
    if classification:
        return (noisy, signal_noisy > 0), (clean, signal_clean > 0)
    return (noisy, signal_noisy), (clean, signal_clean)


@pytest.mark.parametrize("classification", [True, False])
def test_regularisation_is_chosen_by_inner_cross_validation(classification):
    """A fixed C or alpha would be the same for both sets; the chosen one follows the data."""
    (x_noisy, y_noisy), (x_clean, y_clean) = noisy_and_clean(classification)
    noisy = fit_probe(x_noisy, y_noisy, classification)
    clean = fit_probe(x_clean, y_clean, classification)
    grid = C_GRID if classification else ALPHA_GRID
    assert noisy.regularisation in grid and clean.regularisation in grid
    assert noisy.inner_folds == clean.inner_folds == 5
    strength = (lambda p: 1 / p.regularisation) if classification else (lambda p: p.regularisation)
    assert strength(noisy) > 10 * strength(clean)  # much stronger regularisation for 200 noise features


def test_inner_folds_keep_subjects_together_and_every_class():
    y = np.array(["AD", "CN"] * 12)
    subjects = np.repeat(np.arange(12), 2)  # two scans per subject, one of each label
    splitter = inner_splitter(y, subjects, True, 5, seed=0)
    for train, test in splitter.split(np.zeros(len(y)), y, subjects):
        assert not set(subjects[train]) & set(subjects[test])
        assert set(y[train]) == {"AD", "CN"}
    # too few subjects in a class for two folds: no inner CV, the default is used and reported
    assert inner_splitter(np.array(["AD", "CN", "CN"]), None, True, 5, seed=0) is None
    probe = fit_probe(np.eye(3), np.array(["AD", "CN", "CN"]), True)
    assert probe.inner_folds == 0 and probe.regularisation == 1.0


def test_fit_and_score_reports_the_chosen_strength_outside_the_test_metrics():
    (x, y), _ = noisy_and_clean(True)
    paths = [f"s{i}.nii.gz" for i in range(len(y))]
    features = pd.DataFrame(x, index=paths)
    rows = pd.DataFrame({"path": paths, "subject": [f"P{i // 2}" for i in range(len(y))], "label": y.astype(str)})
    scores = fit_and_score(features, rows.iloc[:40], rows.iloc[40:], "label", classification=True)
    assert scores["probe/regularisation"] in C_GRID and scores["probe/inner_folds"] == 5
    assert {"test/auroc", "test/balanced_accuracy"} <= set(scores)


# ---------------------------------------------------------------- features of frozen encoders


def micro_encoder(shape=(16, 16, 16)):
    import torch

    from ichor.models.presets import build_encoder

    torch.manual_seed(0)
    return build_encoder("mae_vit_micro", shape, patch_size=4).eval()


def test_region_pooling_keeps_each_region_and_fills_empty_ones_with_the_brain_mean():

    from ichor.evaluation.pooling import pool_regions, region_index

    grid = (4, 4, 4)
    index = region_index(grid, 2)
    assert index.bincount().tolist() == [8] * 8
    assert index[0] == 0 and index[-1] == 7 and index[3] == 1  # (0, 0, 3) is in the second octant along w
    tokens = index.float().reshape(1, -1, 1).repeat(1, 1, 2)  # every token holds its region's number
    mask = index.reshape(1, -1) != 7  # no brain token in the last region
    pooled = pool_regions(tokens, mask, grid, 2).reshape(8, 2)
    assert pooled[:7, 0].tolist() == list(range(7))
    assert pooled[7].tolist() == [3.0, 3.0]  # the brain mean of regions 0..6
    assert region_index((3, 4, 5), 3).unique().numel() == 27
    with pytest.raises(ValueError, match="smallest grid side"):
        region_index((2, 4, 4), 3)


def test_last_blocks_are_normed_and_concatenated_and_the_hooks_removed():
    import torch
    import torch.nn.functional as F

    from ichor.evaluation.pooling import encode, encode_tokens, feature_width

    encoder = micro_encoder()
    images = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        last, _ = encoder.forward_features(images)
        tokens, valid = encode_tokens(encoder, images, None, blocks=2)
        x = encoder.embed(encoder.patchify(images))
        for block in encoder.blocks[:-1]:
            x = block(x)
        norm = encoder.norm
        expected = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    assert tokens.shape == (2, 64, 2 * encoder.embed_dim) and valid.all()
    torch.testing.assert_close(tokens[..., : encoder.embed_dim], expected)
    torch.testing.assert_close(tokens[..., encoder.embed_dim :], last)
    assert not encoder.norm._forward_hooks and not any(b._forward_hooks for b in encoder.blocks)
    torch.testing.assert_close(encoder.forward_features(images)[0], last)  # the encoder is unchanged after
    brain = torch.zeros_like(images, dtype=torch.bool)
    brain[:, :, 2:14, 2:14, 2:10] = True  # the last quarter of the grid along w holds no brain
    features = encode(encoder, images, brain, "region", blocks=3, regions=2)
    assert features.shape == (2, feature_width(encoder.embed_dim, "region", 3, 2)) == (2, 8 * 3 * 96)
    with pytest.raises(ValueError, match="depth"):
        encode(encoder, images, brain, "brain_mean", blocks=5)


# ---------------------------------------------------------------- attentive probe


def test_attentive_probe_trains_on_frozen_tokens_with_the_encoder_unchanged(
    tmp_path, downstream_manifests, tiny_encoder
):
    """mode linear_probe + pooling attentive: the encoder stays frozen and in eval mode while the pooler learns."""
    from dataclasses import replace

    import torch
    from helpers import DATA_ARGS, HARMONISATION, quiet_trainer

    from ichor.data import CBFDataModule
    from ichor.downstream import DownstreamTask
    from ichor.downstream.task import TASK_OPTIM
    from ichor.models.weights import load_encoder

    task = DownstreamTask(str(tiny_encoder), pooling="attentive", optim=replace(TASK_OPTIM, lr=0.05))
    data = CBFDataModule(
        downstream_manifests, cache_dir=str(tmp_path / "cache"), **{**DATA_ARGS, "target": "diagnosis"}
    )
    modes: list[bool] = []
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=1)
    task.configure_encoder(HARMONISATION)  # as setup() would: the encoder exists before training
    task.configure_head(["CN", "AD"])
    record = lambda block, args: modes.append(task.encoder.training or block.training)  # noqa: E731
    task.encoder.blocks[0].register_forward_pre_hook(record)
    before = {k: v.clone() for k, v in task.pooler.state_dict().items()}
    trainer.fit(task, datamodule=data)
    reference, _ = load_encoder(str(tiny_encoder))
    for key, value in reference.state_dict().items():
        assert torch.equal(task.encoder.state_dict()[key], value), key  # frozen: weights unchanged by training
    assert modes and not any(modes)  # every forward pass of the encoder ran in eval mode
    assert any(not torch.equal(before[k], v) for k, v in task.pooler.state_dict().items())  # the pooler learned
    assert task.head.fc.in_features == task.encoder.embed_dim + 2  # the pooled tokens and the global CBF scalars
