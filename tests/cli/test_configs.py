"""Every YAML under lightning_configs/, found by glob: a new config is tested without editing a list.

- A Lightning config (its header shows the ``ichor fit --config ... --config X`` command that runs it,
  shared fragments first) runs the way a user runs it, through ``ichor.cli.main`` with exactly those
  files, as a ``fast_dev_run`` (one training and one validation batch) on CPU, pointed at the
  session's small synthetic data (``synthetic_manifests``).
- A benchmark config (``pretrain``/``tasks`` keys; ``ichor benchmark --config X``) must parse and
  name only configs the repository ships, composed as their headers say (the check of
  tests/benchmark/test_benchmark.py).
- A fragment (a YAML in a folder of lightning_configs/: shared data and trainer, the benchmarks'
  tasks) is exercised through the configs that use it, and must be used by one.

What makes a run small is chosen from the config's content, never from its file name: every
Lightning config gets ``TRAINER`` and the data overrides (stable keys only: ``trainer.*`` and
``data.init_args.*``); a pre-training config (its model a :class:`ichor.pretrain.Pretrainer`)
also gets ``TINY_PRETRAINER``; a task config (a :class:`ichor.downstream.DownstreamTask`) gets an
exported encoder of the same data. A config of any other kind fails here until this module
learns how to make it small.
"""

from __future__ import annotations

import importlib
import math
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from helpers import (
    CONFIGS,
    HARMONISATION,
    check_benchmark_config,
    composition,
    config_args,
    make_encoder,
    small_data_args,
)

from ichor.cli import main
from ichor.downstream import DownstreamTask
from ichor.pretrain import Pretrainer
from ichor.training.runs import PRETRAINERS_GROUP, IchorCLI

# The one model override that shrinks a pre-training config: a micro ViT with 8^3 patches, not
# compiled (compiling costs minutes on CPU). These are the only model keys of a pre-trainer this
# module names: when the backbone's keys move, change them here.
TINY_PRETRAINER = [
    "--model.init_args.backbone.preset=mae_vit_micro",
    "--model.init_args.backbone.patch_size=8",
    "--model.init_args.backbone.compile=false",
]
# One training and one validation batch on one CPU process, whatever the config asks for
# (pretrain_vit_base_slurm.yaml: GPUs, 4 devices x 2 nodes, DDP, bf16).
TRAINER = [
    "--trainer.fast_dev_run=1",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.num_nodes=1",
    "--trainer.strategy=auto",
    "--trainer.precision=32-true",
    "--trainer.enable_progress_bar=false",
]
# small_data_args harmonises synthetic_manifests to this grid (6 mm voxels, 32 x 48 x 32).
SMALL_HARMONISATION = {**HARMONISATION, "spacing": [6.0] * 3, "shape": [32, 48, 32]}

YAMLS = sorted(CONFIGS.glob("*.yaml"))
FRAGMENTS = sorted(CONFIGS.glob("*/**/*.yaml"))


def read(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def merged(base: dict, later: dict) -> dict:
    """``later`` over ``base``, key by key (enough to find the classes a composition names)."""
    out = dict(base)
    for key, value in later.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def composed(path: Path) -> dict:
    """The files of a Lightning config's command, merged in order."""
    config: dict = {}
    for file in composition(path.name):
        config = merged(config, read(file))
    return config


def is_lightning(path: Path) -> bool:
    if is_benchmark(path):
        return False
    return "model" in composed(path)  # LightningCLI needs a model; data and trainer may be defaults


def is_benchmark(path: Path) -> bool:
    return {"pretrain", "tasks"} <= read(path).keys()


def model_class(config: dict) -> type:
    """The LightningModule class a config names (``model: Name`` or ``model: {class_path: a.b.Name}``)."""
    spec = config["model"]
    path = spec if isinstance(spec, str) else spec["class_path"]
    if "." in path:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)
    # A bare class name, which IchorCLI resolves among the classes it has imported.
    known = [entry.load() for entry in entry_points(group=PRETRAINERS_GROUP)] + [DownstreamTask]
    matches = [cls for cls in known if cls.__name__ == path]
    assert matches, f"model {path!r}: neither a pre-training method of {PRETRAINERS_GROUP} nor DownstreamTask"
    return matches[0]


def data_class(config: dict) -> type:
    spec = config["data"]
    module, _, name = (spec if isinstance(spec, str) else spec["class_path"]).rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One harmonised cache for every config: the data overrides are the same, so it is built once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def small_encoder(tmp_path_factory) -> Path:
    """An exported micro encoder whose harmonisation matches small_data_args, for task configs."""
    return make_encoder(tmp_path_factory.mktemp("configs_encoder"), harmonisation=SMALL_HARMONISATION)


def model_overrides(cls: type, request) -> list[str]:
    if issubclass(cls, Pretrainer):
        return TINY_PRETRAINER
    if issubclass(cls, DownstreamTask):
        return [f"--model.init_args.encoder={request.getfixturevalue('small_encoder')}"]
    pytest.fail(
        f"{cls.__module__}.{cls.__qualname__} is neither a Pretrainer nor a DownstreamTask: "
        "teach tests/cli/test_configs.py how to run it small"
    )


def test_every_config_is_a_lightning_or_a_benchmark_config():
    """Nothing under lightning_configs/ escapes the two tests below."""
    assert YAMLS, f"no config found under {CONFIGS}"
    unknown = [path.name for path in YAMLS if not (is_lightning(path) or is_benchmark(path))]
    assert not unknown, f"neither a Lightning config (model) nor a benchmark config (pretrain/tasks): {unknown}"


def test_every_fragment_is_used_by_a_shipped_config():
    """A fragment is tested through the configs that compose it; one that none uses is dead."""
    used = {file for path in YAMLS if not is_benchmark(path) for file in composition(path.name)}
    used |= {CONFIGS.parent / str(read(path)["tasks"]) for path in YAMLS if is_benchmark(path)}
    assert FRAGMENTS and not [f.relative_to(CONFIGS) for f in FRAGMENTS if f not in used]


@pytest.mark.parametrize("path", [p for p in YAMLS if is_lightning(p)], ids=lambda p: p.name)
def test_lightning_config_runs_fast_dev_run(path, tmp_path, monkeypatch, request, synthetic_manifests, cache_dir):
    """`ichor fit --config X` trains one batch and validates one batch, with the classes X names."""
    config = composed(path)
    model, data = model_class(config), data_class(config)
    monkeypatch.chdir(tmp_path)  # runs/ (logs, checkpoints, predictions) lands in tmp_path
    monkeypatch.setattr(sys, "argv", ["ichor"])  # as from a shell: pytest's own arguments are not the CLI's
    runs: list[IchorCLI] = []
    init = IchorCLI.__init__

    def recording(self, *args, **kwargs):
        runs.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(IchorCLI, "__init__", recording)
    args = [
        "fit",
        *config_args(path.name),
        *TRAINER,
        *small_data_args(synthetic_manifests),
        f"--data.init_args.cache_dir={cache_dir}",
        *model_overrides(model, request),
    ]
    assert main(args) == 0

    (cli,) = runs
    assert type(cli.model) is model and isinstance(cli.datamodule, data)
    trainer = cli.trainer
    assert trainer.state.finished and trainer.global_step == 1  # one optimiser step
    assert trainer.fit_loop.epoch_loop.val_loop.batch_progress.total.completed == 1  # one validation batch
    assert math.isfinite(float(trainer.callback_metrics["val/loss"]))


@pytest.mark.parametrize("path", [p for p in YAMLS if is_benchmark(p)], ids=lambda p: p.name)
def test_benchmark_config_loads_and_names_shipped_configs(path):
    check_benchmark_config(path)
