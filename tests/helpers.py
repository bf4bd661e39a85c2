"""Helpers shared by the test modules: plain functions and constants (the fixtures are in conftest.py).

Not a test module (pytest collects only ``test_*.py``). Test modules import it as
``from helpers import ...``: tests/ has no ``__init__.py``, so pytest's default ("prepend")
import mode puts tests/ on ``sys.path`` before importing conftest.py and the test modules.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from ichor.benchmark import load_config
from ichor.data import CBFDataModule
from ichor.models import Backbone
from ichor.models.weights import export_encoder
from ichor.pretrain import MAEPretrainer

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "lightning_configs"


def composition(name: str | Path) -> list[Path]:
    """The files that make the shipped Lightning config ``name``, in order: the ``--config`` paths of the
    ``ichor fit`` command in its header (shared fragments first, the config itself last), as a user types them."""
    from ichor.training.runs import header_composition

    files = header_composition(CONFIGS / name)
    assert files, f"{name}: its header shows no `ichor fit --config ... --config {name}` command"
    return [REPO / file for file in files]


def config_args(name: str | Path) -> list[str]:
    """``--config`` arguments of the shipped config ``name`` (with its fragments), for ``ichor fit``."""
    return [arg for file in composition(name) for arg in ("--config", str(file))]


# ---------------------------------------------------------------- single NIfTI maps

AFFINE = np.diag([3.0, 3.0, 4.0, 1.0])  # anisotropic 3 x 3 x 4 mm voxels


def brain(seed: int = 0, size: int = 16) -> np.ndarray:
    """A size^3 sphere of realistic CBF (20-70 mL/100g/min), zero outside, like a real derivative."""
    grid = np.indices((size,) * 3) - (size - 1) / 2
    inside = np.sqrt((grid**2).sum(0)) < size * 0.4
    values = np.random.default_rng(seed).uniform(20, 70, inside.shape)
    return np.where(inside, values, 0).astype(np.float32)


def save(path: Path, data=None, affine=AFFINE) -> Path:
    """Write ``data`` (default: ``brain()``) as NIfTI at ``path``, making its folder; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(brain() if data is None else np.asarray(data), affine).to_filename(path)
    return path


# ---------------------------------------------------------------- downstream data and encoder
# The scans are 20^3 ellipsoid "brains" at 4 mm whose CBF level depends on the diagnosis, so
# that a head has something to learn; the encoder is an untrained mae_vit_micro (patch 8)
# exported with the harmonisation settings this data uses.

SHAPE = (16, 16, 16)
SPACING = 4.0
HARMONISATION = {
    "spacing": [SPACING] * 3,
    "shape": list(SHAPE),
    "volume": None,
    "orientation": "RAS",
    "normalization": "relative",  # as the shipped demo configs (common/demo.yaml)
}
DATA_ARGS = {
    "spacing": SPACING,
    "shape": SHAPE,
    "normalization": "relative",
    "num_workers": 0,
    "progress": False,
    "augment": None,
    "batch_size": 4,
    "val_fraction": 0.25,
    "test_fraction": 0.25,
}
DIAGNOSES = ("CN", "AD")
CBF_LEVEL = {"CN": 60.0, "AD": 42.0}


def brain_map(rng: np.random.Generator, level: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(20) - 9.5] * 3, indexing="ij"))
    inside = ((grid / np.array([7.5, 8.5, 7.0])[:, None, None, None]) ** 2).sum(0) <= 1
    values = level * (1 + 0.15 * rng.standard_normal(inside.shape))
    return np.where(inside, values, 0).astype(np.float32)


def make_dataset(root: Path, studies: int = 2, subjects: int = 6, seed: int = 0) -> list[str]:
    """Per-study manifests (subject, session, study, path, diagnosis, age, rating); returns their paths."""
    rng = np.random.default_rng(seed)
    manifests = []
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    for s in range(1, studies + 1):
        folder = root / f"study-0{s}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(subjects):
            subject, diagnosis = f"S{s}P{i:03d}", DIAGNOSES[i % 2]
            name = f"sub-{subject}_cbf.nii.gz"
            nib.save(nib.Nifti1Image(brain_map(rng, CBF_LEVEL[diagnosis]), affine), folder / name)
            rows.append(
                {
                    "subject": subject,
                    "session": "1",
                    "study": f"study-0{s}",
                    "path": name,
                    "diagnosis": diagnosis,
                    "age": round(float(rng.uniform(55, 85)), 1),
                    "rating": round(float(rng.uniform(1, 4)), 2),
                }
            )
        path = folder / "manifest.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        manifests.append(str(path))
    return manifests


def make_encoder(
    root: Path, harmonisation: dict | None = None, shape=None, patch_size: int = 8, overrides: dict | None = None
) -> Path:
    """An exported untrained mae_vit_micro encoder (patch 8, the harmonisation's shape unless given;
    ``overrides`` change its widths) with ``harmonisation`` metadata."""
    torch.manual_seed(0)
    harmonisation = harmonisation or HARMONISATION
    shape = tuple(harmonisation.get("shape", SHAPE)) if shape is None else shape
    backbone = Backbone("mae_vit_micro", patch_size=patch_size, img_size=shape, overrides=overrides or {})
    module = MAEPretrainer(backbone=backbone)
    module.data_record = {"harmonisation": harmonisation}
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "epoch": 0,
        "global_step": 0,
    }
    module.on_save_checkpoint(checkpoint)  # the data and encoder records Lightning's checkpointing adds
    torch.save(checkpoint, root / "pretrain.ckpt")
    return export_encoder(root / "pretrain.ckpt", root / "encoder")


# ---------------------------------------------------------------- pre-training runs


class StepLosses(Callback):
    """Records the training loss of every optimiser step, in order."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


class KillAfter(Callback):
    """Stops training at the end of epoch ``epochs``, where a killed job's last checkpoint would be."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, module):
        trainer.should_stop = trainer.current_epoch + 1 >= self.epochs


def assert_resumes_exactly(run: Callable[..., list[float]], checkpoint: Path) -> None:
    """``run(kill_after=None, ckpt_path=None)`` trains (with ``KillAfter(kill_after)``, saving ``checkpoint`` at
    its end) and returns its step losses: killed after epoch 2 and resumed, it gives the uninterrupted losses."""
    full = run()
    first = run(kill_after=2)
    resumed = run(ckpt_path=checkpoint)
    assert len(first) + len(resumed) == len(full)
    assert first == pytest.approx(full[: len(first)], rel=1e-6)
    assert resumed == pytest.approx(full[len(first) :], rel=1e-5)
    assert len(set(full)) == len(full)  # the losses move: the comparison is not trivial


def small_data_args(manifests) -> list[str]:
    """Overrides that point a shipped config at the small synthetic data (``synthetic_manifests``), on CPU."""
    return [
        f"--data.init_args.manifests=[{','.join(map(str, manifests))}]",
        "--data.init_args.spacing=6.0",
        "--data.init_args.shape=[32,48,32]",
        "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=2",
        "--data.init_args.val_fraction=0.25",
        "--trainer.enable_progress_bar=false",
    ]


def small_datamodule(manifests, cache_dir: Path, **changes) -> CBFDataModule:
    """A CBFDataModule for a short test run: batches of 4 read in the test's own process, no augmentation,
    no test split, no progress bar; ``changes`` give the grid and anything else the test needs."""
    options = {
        "batch_size": 4,
        "num_workers": 0,
        "test_fraction": 0.0,
        "augment": None,
        "progress": False,
        "persistent_workers": False,
        **changes,
    }
    return CBFDataModule([str(m) for m in manifests], cache_dir=str(cache_dir), **options)


def quiet_trainer(root: Path, **options) -> L.Trainer:
    """A CPU Trainer that writes nothing outside ``root`` and prints no progress bar or model summary:
    no logger and no checkpoints unless ``options`` (the run's length and the rest) give them."""
    defaults = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(root),
    }
    return L.Trainer(**{**defaults, **options})


def demo_micro_args() -> list[str]:
    """`ichor fit` of the shipped MAE demo config (with its fragments) and the micro backbone; the test adds
    the data and the run's length."""
    return ["fit", *config_args("pretrain_demo.yaml"), "--model.init_args.backbone.preset=mae_vit_micro"]


def two_process_ddp(cwd: Path, *args: str) -> None:
    """Runs ``python -m ichor.cli ARGS`` under DDP over 2 CPU processes (gloo) in ``cwd``, the way a cluster
    runs `ichor fit`; fails the test with the end of its stderr if it does not exit 0."""
    command = [sys.executable, "-m", "ichor.cli", *args, "--trainer.strategy=ddp", "--trainer.devices=2"]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def downstream_data_args(manifests, cache: Path) -> list[str]:
    """Overrides that point a shipped task config at ``make_dataset`` data (16^3 at 4 mm, a quarter each for
    validation and test) read in the main process."""
    return [
        f"--data.init_args.manifests=[{','.join(map(str, manifests))}]",
        f"--data.init_args.cache_dir={cache}",
        "--data.init_args.spacing=4.0",
        "--data.init_args.shape=[16,16,16]",
        "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=4",
        "--data.init_args.val_fraction=0.25",
        "--data.init_args.test_fraction=0.25",
        "--data.init_args.progress=false",
    ]


def tiny_task_args(encoder, manifests, cache: Path) -> list[str]:
    """Overrides that run a shipped task config for one CPU epoch on ``make_dataset`` data and a ``make_encoder`` encoder."""
    return [
        f"--model.init_args.encoder={encoder}",
        f"--data.init_args.manifests=[{','.join(map(str, manifests))}]",
        f"--data.init_args.cache_dir={cache}",
        "--data.init_args.shape=[16,16,16]",
        "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=4",
        "--data.init_args.progress=false",
        "--trainer.max_epochs=1",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
    ]


def tiny_cv(config: str, out: Path, encoder, manifests, cache: Path, *options: str) -> int:
    """`ichor cv` of the shipped task ``config`` as ``tiny_task_args`` runs it; ``options`` are cv's own (--folds 2)."""
    from ichor.cli import main

    command = ["cv", *config_args(config), *options, "--out", str(out)]
    return main([*command, "--", *tiny_task_args(encoder, manifests, cache)])


# ---------------------------------------------------------------- benchmark configs


def check_benchmark_config(path: Path) -> None:
    """A benchmark config parses, and every config it names is one the repo ships, composed with the
    fragments its header command gives (the same files, in the same order, as ``ichor fit`` runs it)."""
    config = load_config(path)
    named = [spec.config for spec in config.pretrain.values()] + [task.config for task in config.tasks]
    assert config.tasks and named
    for files in named:
        assert [REPO / file for file in files] == composition(Path(files[-1]).name), files
