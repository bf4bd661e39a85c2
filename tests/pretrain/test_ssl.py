"""The other pre-training methods: SimCLR (contrastive) and Models Genesis (restoration)."""

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import StepLosses, config_args, quiet_trainer, small_data_args, two_process_ddp

import ichor.models
import ichor.models.weights
from ichor.cli import main
from ichor.models import Backbone
from ichor.models.weights import DATA_RECORD_KEY, ENCODER_RECORD_KEY
from ichor.pretrain.corruptions import (
    GenesisCorruption,
    local_pixel_shuffling,
    nonlinear_transformation,
    painting,
)
from ichor.pretrain.genesis import GenesisPretrainer
from ichor.pretrain.simclr import SimCLRPretrainer, nt_xent, nt_xent_logits
from ichor.pretrain.views import ViewAugmentation

SHAPE = (16, 24, 16)


def tiny(img_size: tuple[int, int, int] | None = None) -> Backbone:
    """A 2-block micro ViT with 8^3 patches."""
    return Backbone("mae_vit_micro", patch_size=8, img_size=img_size, overrides={"depth": 2})


def brain_batch(n: int = 4, seed: int = 0) -> dict:
    """Ellipsoid 'brains', zero outside, each with a bright blob somewhere else: a batch as the datamodule gives it."""
    g = torch.Generator().manual_seed(seed)
    d, h, w = (torch.linspace(-1, 1, s).view(*[-1 if i == j else 1 for j in range(3)]) for i, s in enumerate(SHAPE))
    masks = (d**2 + h**2 + w**2 < 0.7).expand(n, 1, *SHAPE).clone()
    centres = 0.8 * torch.rand(n, 3, 1, 1, 1, generator=g) - 0.4
    blobs = torch.exp(-((d - centres[:, 0]) ** 2 + (h - centres[:, 1]) ** 2 + (w - centres[:, 2]) ** 2) / 0.05)
    level = 0.3 + 0.4 * torch.rand(n, 1, 1, 1, 1, generator=g)
    images = level * (1 + blobs.unsqueeze(1) + 0.1 * torch.randn(n, 1, *SHAPE, generator=g))
    return {"image": torch.where(masks, images, 0.0).float(), "mask": masks}


# ---------------------------------------------------------------- NT-Xent
def test_nt_xent_equals_the_hand_computed_value():
    """Two scans, identical orthogonal views, tau = 1: every anchor scores e^1 (positive) against e^0 twice."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(nt_xent(z, z.clone(), temperature=1.0)) == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)
    # tau = 0.5 with a second view at 90 degrees from the first for scan 0: by hand, per anchor.
    z2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    t = 0.5
    e = lambda s: math.exp(s / t)  # noqa: E731
    anchors = [  # (positive similarity, the three similarities the anchor sees)
        (0.0, [0.0, 0.0, 0.0]),  # z1[0]=(1,0): z1[1], z2[0], z2[1]
        (1.0, [0.0, 1.0, 1.0]),  # z1[1]=(0,1): z1[0], z2[0], z2[1]
        (0.0, [0.0, 1.0, 1.0]),  # z2[0]=(0,1): z1[0], z1[1], z2[1]
        (1.0, [0.0, 1.0, 1.0]),  # z2[1]=(0,1): z1[0], z1[1], z2[0]
    ]
    expected = sum(-math.log(e(p) / sum(e(s) for s in seen)) for p, seen in anchors) / 4
    assert float(nt_xent(z, z2, temperature=t)) == pytest.approx(expected, rel=1e-6)


def test_nt_xent_is_low_for_matching_views_and_chance_for_random_ones():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 32, generator=g)
    same = float(nt_xent(z, z + 0.01 * torch.randn(16, 32, generator=g), temperature=0.1))
    unrelated = float(nt_xent(z, torch.randn(16, 32, generator=g), temperature=0.1))
    assert same < 0.1 < math.log(31) - 1 < unrelated


def test_nt_xent_split_over_ranks_equals_the_global_batch():
    """What each DDP rank computes (its anchors against the gathered keys) averages to the one-device loss."""
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    per_rank = [
        F.cross_entropy(*nt_xent_logits(z1[i : i + 3], z2[i : i + 3], 0.2, keys1=z1, keys2=z2, offset=i))
        for i in (0, 3)
    ]
    assert float(sum(per_rank) / 2) == pytest.approx(float(nt_xent(z1, z2, 0.2)), rel=1e-6)


# ---------------------------------------------------------------- SimCLR views
def test_views_differ_keep_the_background_zero_and_are_reproducible():
    batch = brain_batch()
    augment = ViewAugmentation()
    v1, m1 = augment(batch["image"], batch["mask"], torch.Generator().manual_seed(0))
    v2, _ = augment(batch["image"], batch["mask"], torch.Generator().manual_seed(1))
    again, _ = augment(batch["image"], batch["mask"], torch.Generator().manual_seed(0))
    assert v1.shape == batch["image"].shape and m1.dtype == torch.bool
    assert (v1[~m1] == 0).all() and m1.float().mean() > 0.2
    assert not torch.allclose(v1, v2)
    torch.testing.assert_close(v1, again)


# ---------------------------------------------------------------- Genesis corruptions
ALL = torch.ones(4, dtype=torch.bool)


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_local_pixel_shuffling_permutes_voxels_inside_whole_brain_cells_only():
    batch = brain_batch()
    images, masks = batch["image"], batch["mask"]
    out = local_pixel_shuffling(images, masks, ALL, 4, 1.0, gen())
    cells, new = (x.reshape(4, 4, 4, 6, 4, 4, 4) for x in (images, out))
    whole = masks.reshape(4, 4, 4, 6, 4, 4, 4).all(dim=(2, 4, 6), keepdim=True).expand_as(cells)
    assert not torch.equal(out, images)
    assert torch.equal(new[~whole], cells[~whole])  # cells touching the edge or background are untouched
    # Inside a cell the values are a permutation: same sorted values.
    flat = lambda x: x.permute(0, 1, 3, 5, 2, 4, 6).reshape(4, -1, 64).sort(-1).values  # noqa: E731
    torch.testing.assert_close(flat(new), flat(cells))
    keep = local_pixel_shuffling(images, masks, torch.tensor([True, False, True, False]), 4, 1.0, gen())
    assert torch.equal(keep[1], images[1]) and not torch.equal(keep[0], images[0])


def test_nonlinear_transformation_stays_in_the_brain_range_and_zero_outside():
    batch = brain_batch()
    images, masks = batch["image"], batch["mask"]
    out = nonlinear_transformation(images, masks, ALL, torch.zeros(4, dtype=torch.bool), gen())
    assert (out[~masks] == 0).all() and not torch.allclose(out[masks], images[masks])
    for i in range(4):
        brain, new = images[i][masks[i]], out[i][masks[i]]
        assert new.min() >= brain.min() - 1e-5 and new.max() <= brain.max() + 1e-5
        order = brain.argsort()  # without inversion the curve is monotone increasing
        assert (new[order].diff() >= -1e-5).all()
    inverted = nonlinear_transformation(images, masks, ALL, ALL, gen())
    brain = masks[0]
    assert torch.corrcoef(torch.stack([inverted[0][brain], images[0][brain]]))[0, 1] < 0


@pytest.mark.parametrize(("outside", "size", "most"), [(False, (1 / 6, 1 / 3), 0.5), (True, (3 / 7, 4 / 7), 0.99)])
def test_painting_changes_only_brain_voxels_of_chosen_scans(outside, size, most):
    """In- and out-painting with Models Genesis's cube sizes: noise on some, not most or all, of the brain."""
    batch = brain_batch()
    images, masks = batch["image"], batch["mask"]
    chosen = torch.tensor([True, True, False, True])
    out = painting(images, masks, chosen, 5, size, gen(), outside=outside)
    assert (out[~masks] == 0).all()
    assert torch.equal(out[2], images[2])
    changed = (out != images)[chosen]
    fraction = changed.float().sum() / masks[chosen].sum()
    assert 0.01 < fraction < most


def test_genesis_corruption_is_reproducible_and_never_touches_the_background():
    batch = brain_batch()
    corrupt = GenesisCorruption(shuffle_p=1.0, nonlinear_p=1.0, paint_p=1.0)
    out = corrupt(batch["image"], batch["mask"], gen())
    torch.testing.assert_close(out, corrupt(batch["image"], batch["mask"], gen()))
    assert (out[~batch["mask"]] == 0).all() and (out != batch["image"]).any(dim=(1, 2, 3, 4)).all()
    with pytest.raises(ValueError, match="shuffle_block"):
        GenesisPretrainer(backbone=tiny(), corruption=GenesisCorruption(shuffle_block=3))


# ---------------------------------------------------------------- the LightningModules
# Views mild enough that 4 toy scans stay tellable apart at 16x24x16 (the defaults suit real grids).
MILD = ViewAugmentation(
    flip_p=0, rotation_deg=5, crop_scale=(0.9, 1), intensity_range=0.1, blur_sigma=0.5, noise_std=0.05
)
METHODS = {
    "simclr": lambda: SimCLRPretrainer(
        backbone=tiny(SHAPE), projection_dim=16, projection_hidden_dim=32, augmentation=MILD
    ),
    "genesis": lambda: GenesisPretrainer(backbone=tiny(SHAPE), decoder_depth=1),
}


@pytest.mark.parametrize("method", METHODS)
def test_every_parameter_receives_a_gradient(method):
    """DDP without find_unused_parameters needs every parameter in the graph of every step."""
    module = METHODS[method]()
    module.step(brain_batch(), 0, 0)["loss"].backward()
    missing = [name for name, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


class Batches(torch.utils.data.Dataset):
    """The same 4-scan batch every step: the loss must fall when the model learns."""

    def __init__(self, batch, steps):
        self.batch, self.steps = batch, steps

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        return self.batch


@pytest.mark.parametrize("method", METHODS)
def test_loss_falls_on_a_tiny_run(tmp_path, method):
    """30 steps on the same 4 scans (fresh views/corruptions each step): the loss falls well below its start."""
    L.seed_everything(0)
    module = METHODS[method]()
    module.optim.lr, module.optim.warmup_epochs = 0.1, 0.0  # lr 0.1 * 4 / 256 = 1.6e-3
    loader = torch.utils.data.DataLoader(Batches(brain_batch(), 30), batch_size=None)
    losses = StepLosses()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[losses], gradient_clip_val=1.0)
    trainer.fit(module, loader)
    first, last = sum(losses.losses[:5]) / 5, sum(losses.losses[-5:]) / 5
    assert last < 0.75 * first, losses.losses


# ---------------------------------------------------------------- configs and export
METHOD_NAMES = ("simclr", "genesis")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One harmonised cache for every CLI run of this module (it is the slow part of a tiny fit)."""
    return tmp_path_factory.mktemp("cache")


def cli_args(name: str, manifests, cache: Path) -> list[str]:
    """The shipped config pointed at the small synthetic data (as in tests/pretrain/test_pretrain.py), on CPU."""
    return [
        "fit",
        *config_args(f"pretrain_{name}_demo.yaml"),
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--model.init_args.backbone.preset=mae_vit_micro",
        "--model.init_args.backbone.compile=false",
        *small_data_args(manifests),
        f"--data.init_args.cache_dir={cache}",
    ]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, synthetic_manifests, cache_dir) -> dict[str, Path]:
    """last.ckpt of a 2-step epoch of each shipped config, as `ichor fit` writes it."""
    paths = {}
    for name in METHOD_NAMES:
        folder = tmp_path_factory.mktemp(name)
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(folder)
            args = [
                *cli_args(name, synthetic_manifests, cache_dir),
                "--trainer.max_epochs=1",
                "--trainer.limit_train_batches=2",
                "--trainer.limit_val_batches=1",
            ]
            assert main(args) == 0
        paths[name] = folder / "runs" / f"pretrain_{name}_demo" / "version_0" / "checkpoints" / "last.ckpt"
    return paths


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_checkpoint_records_data_and_where_the_encoder_is(checkpoints, name):
    checkpoint = torch.load(checkpoints[name], map_location="cpu", weights_only=False)
    record = checkpoint[ENCODER_RECORD_KEY]
    assert record["method"] == name and record["preset"] == "mae_vit_micro"
    assert record["config"]["img_size"] == [32, 48, 32] and record["config"]["embed_dim"] == 96
    assert checkpoint[DATA_RECORD_KEY]["harmonisation"]["shape"] == [32, 48, 32]
    settings = {"simclr": "augmentation", "genesis": "corruption"}[name]
    assert json.loads(json.dumps(record["pretraining"]))[settings] == checkpoint["hyper_parameters"][settings]
    # The prefix selects exactly a ViTEncoder3D's weights.
    config = {k: v for k, v in record["config"].items() if k != "img_size"}
    encoder = ichor.models.ViTEncoder3D(ichor.models.ViTConfig(**config), record["config"]["img_size"])
    state = {
        k[len(record["prefix"]) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(record["prefix"])
    }
    encoder.load_state_dict(state, strict=True)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_export_encoder_and_load_encoder_work_on_the_checkpoint(tmp_path, checkpoints, name):
    """`ichor export-encoder` gives the trained encoder, projector/decoder stripped; load_encoder reads both forms."""
    checkpoint = torch.load(checkpoints[name], map_location="cpu", weights_only=False)
    prefix = checkpoint[ENCODER_RECORD_KEY]["prefix"]
    out = tmp_path / "encoder"
    assert main(["export-encoder", str(checkpoints[name]), "--out", str(out)]) == 0
    for source in (out, checkpoints[name]):
        encoder, metadata = ichor.models.weights.load_encoder(source)
        assert metadata["img_size"] == [32, 48, 32] and metadata["pretraining"]["method"] == name
        for key, value in encoder.state_dict().items():
            torch.testing.assert_close(value, checkpoint["state_dict"][prefix + key])


@pytest.mark.slow
def test_simclr_two_process_ddp_gathers_negatives(tmp_path, synthetic_manifests, cache_dir):
    """DDP over 2 CPU processes (gloo): embeddings are gathered across ranks and every parameter is used."""
    limits = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    two_process_ddp(tmp_path, *cli_args("simclr", synthetic_manifests, cache_dir), *limits)
    checkpoint = torch.load(
        tmp_path / "runs" / "pretrain_simclr_demo" / "version_0" / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=False,
    )
    assert checkpoint["global_step"] == 2


def test_pretrainers_are_entry_points_a_config_names_by_class(synthetic_manifests):
    """`ichor.pretrainers` lists the three methods, and the CLI takes `model: GenesisPretrainer`."""
    from importlib.metadata import entry_points

    from ichor.pretrain import GenesisPretrainer, MAEPretrainer, SimCLRPretrainer
    from ichor.training.runs import IchorCLI

    loaded = {e.name: e.load() for e in entry_points(group="ichor.pretrainers")}
    assert loaded == {"mae": MAEPretrainer, "simclr": SimCLRPretrainer, "genesis": GenesisPretrainer}
    cli = IchorCLI(
        args=[
            "--model=GenesisPretrainer",
            "--data=ichor.data.CBFDataModule",
            "--trainer.logger=false",
            f"--data.manifests=[{synthetic_manifests[0]}]",
        ],
        run=False,
    )
    assert type(cli.model) is GenesisPretrainer
