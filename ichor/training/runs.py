"""``IchorCLI``: the Lightning configuration of every ICHOR run, shared by ``ichor fit`` and the library.

``ichor fit/validate/test/predict``, cross-validation, the benchmark and ``ichor preprocess`` all
parse their configs through this class, so a config means the same thing everywhere. Library code
composes a run as a :class:`Run`: config files applied in order (as ``--config a --config b``),
then overrides as nested mappings (``{"trainer": {"max_epochs": 5}}``), merged by jsonargparse
exactly as ``ichor fit`` merges its command line. Beyond
``LightningCLI`` it owns the defaults a config would otherwise repeat:

- a TensorBoard logger under ``runs/<name>`` (or ``<trainer.default_root_dir>/<name>``), ``<name>``
  being the config file's stem;
- a ``LearningRateMonitor`` (key ``lr_monitor``), logging every step;
- a ``ModelCheckpoint`` (key ``checkpoint``) into ``runs/<name>/checkpoints``, keeping ``best.ckpt``
  and ``last.ckpt`` (for ``--ckpt_path last``), monitoring what the model class says it should
  (``checkpoint_monitor``: ``val/loss`` for pre-training, the head's metric for a task);
- ``early_stopping_patience: N`` (off by default): stop when that monitored metric has not
  improved for N validation epochs (Lightning's ``EarlyStopping`` on the checkpoint's monitor).

Each default can still be overridden in a config or on the command line
(e.g. ``--checkpoint.monitor val/f1 --checkpoint.mode max``, ``--trainer.logger.init_args.name my_run``);
a model class without ``checkpoint_monitor`` gets no monitor (``best.ckpt`` is then the latest epoch).
``trainer.logger: false`` drops the LR monitor, ``trainer.enable_checkpointing: false`` the checkpoint.
``ichor predict`` and ``ichor test`` need ``--ckpt_path``.
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

PRETRAINERS_GROUP = "ichor.pretrainers"
RUNS_DIR = "runs"
DEFAULT_RUN_NAME = "ichor"
TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
# Commands that would score an untrained model without --ckpt_path, and what it would do.
NEEDS_CHECKPOINT = {"predict": "predict", "test": "be tested"}


@dataclass(frozen=True)
class Run:
    """One run's configuration: Lightning config files applied in order, then mappings of overrides.

    ``overrides`` are nested mappings of config keys (``{"model": {"init_args": {"mask_ratio": 0.6}}}``),
    applied one after the other, later keys winning; jsonargparse merges them as it merges a later
    ``--config`` file (a ``class_path`` may be left out to keep the config's class). ``command_line`` is a
    user's own ``--key value`` arguments (``ichor cv ... -- --trainer.max_epochs 5``), applied right after
    the files, as ``ichor fit`` applies them; code composes with mappings.
    """

    configs: tuple[str, ...]
    overrides: tuple[Mapping[str, Any], ...] = ()
    command_line: tuple[str, ...] = ()

    @classmethod
    def of(cls, configs: str | os.PathLike | Sequence[str | os.PathLike], *overrides: Mapping[str, Any]) -> Run:
        """``configs`` (one path or several) with ``overrides``, empty mappings dropped."""
        paths = [configs] if isinstance(configs, (str, os.PathLike)) else list(configs)
        return cls(tuple(str(path) for path in paths), tuple(o for o in overrides if o))

    def override(self, *overrides: Mapping[str, Any]) -> Run:
        """This run with more overrides, applied after its own."""
        return replace(self, overrides=(*self.overrides, *(o for o in overrides if o)))

    def parse(self, parser: LightningArgumentParser) -> Namespace:
        """The config ``parser`` (the CLI's) makes of the files, the command line and the overrides."""
        files = [item for path in self.configs for item in ("--config", path)]
        config = parser.parse_args([*files, *self.command_line])
        for overrides in self.overrides:
            config = parser.parse_object(dict(overrides), namespace=config)
        return config

    def record(self) -> dict[str, Any]:
        """The run as plain data (JSON), to tell whether a saved result was made by the same run."""
        return {
            "configs": list(self.configs),
            "overrides": list(self.overrides),
            "command_line": list(self.command_line),
        }


class IchorCLI(LightningCLI):
    """LightningCLI with ICHOR's defaults (see the module docstring); any LightningModule / LightningDataModule by class path.

    The pre-training methods of the ``ichor.pretrainers`` entry-point group (ICHOR's own and
    any installed package's) are imported first, so a config may name them by class name
    alone (``model: SimCLRPretrainer``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for entry in entry_points(group=PRETRAINERS_GROUP):
            entry.load()
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault(
            "trainer_defaults", {"logger": {"class_path": TENSORBOARD, "init_args": {"save_dir": RUNS_DIR}}}
        )
        super().__init__(LightningModule, LightningDataModule, *args, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType | Run) -> None:
        """A :class:`Run`, or Lightning's arguments without its warning that ``args`` and ``sys.argv``
        are both given (``ichor.cli.main(argv)`` called from Python, on purpose)."""
        if isinstance(args, Run):
            self.config = args.parse(parser)
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # A new run owns best.ckpt and last.ckpt (no "last-v1.ckpt" beside a previous run's last.ckpt, which
        # `--ckpt_path last` and `ichor export-encoder .../last.ckpt` would then pick up).
        parser.set_defaults(
            {
                "checkpoint.filename": "best",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_argument(
            "--early_stopping_patience",
            type=int | None,
            default=None,
            help="stop after this many validation epochs without improvement of the checkpoint's monitor",
        )

    def before_instantiate_classes(self) -> None:
        """Fill what depends on the config as a whole: run name, checkpoint folder and monitor."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand in NEEDS_CHECKPOINT and not config.get("ckpt_path"):
            raise ValueError(
                f"{self.subcommand} needs --ckpt_path, a trained checkpoint (e.g. runs/<name>/checkpoints/best.ckpt): "
                f"without one the untrained model would {NEEDS_CHECKPOINT[self.subcommand]}"
            )
        for callback in config.trainer.get("callbacks") or []:
            class_path = str(callback.get("class_path", "")) if isinstance(callback, Namespace) else ""
            for cls, key in ((ModelCheckpoint, "checkpoint"), (LearningRateMonitor, "lr_monitor")):
                if class_path.rsplit(".", 1)[-1] == cls.__name__:
                    raise ValueError(
                        f"trainer.callbacks lists a {cls.__name__}, which ichor fit adds itself: move its settings "
                        f"to the config's top-level `{key}:` key (see CHANGELOG.md)"
                    )
        name = run_name(config)
        logger = config.trainer.logger
        root = config.trainer.get("default_root_dir")
        if isinstance(logger, Namespace) and str(logger.get("class_path", "")).endswith("TensorBoardLogger"):
            if logger.init_args.get("name") in (None, "lightning_logs"):
                logger.init_args.name = name
            if root and logger.init_args.get("save_dir") == RUNS_DIR:
                logger.init_args.save_dir = str(root)  # the trainer's root, where the user asked for everything
            save_dir, name = logger.init_args.save_dir, logger.init_args.name
        else:
            save_dir = root or RUNS_DIR
        checkpoint = config.checkpoint
        if checkpoint.dirpath is None:
            checkpoint.dirpath = str(Path(save_dir) / name / "checkpoints")
        if checkpoint.monitor is None:
            checkpoint.monitor, checkpoint.mode = checkpoint_monitor(config.model)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        """The trainer, without the added callbacks that its settings rule out: no LR monitor without a
        logger, no checkpoint callback with ``enable_checkpointing: false`` (Lightning refuses both)."""
        if not config.get("logger"):
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        full = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if (patience := full.get("early_stopping_patience")) is not None:
            monitor = full.checkpoint.monitor
            if monitor is None:
                raise ValueError("early_stopping_patience needs a monitored metric: set checkpoint.monitor")
            callbacks = [*callbacks, EarlyStopping(monitor, patience=patience, mode=full.checkpoint.mode)]
        return super()._instantiate_trainer(config, callbacks)


class _ParsedOnly(IchorCLI):
    """An ``IchorCLI`` that parses and builds nothing: the settings of a run that is not trained here.

    A model is optional, so that a data fragment alone (``lightning_configs/common/demo.yaml``) parses.
    """

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Lightning's trainer, model and data arguments, with the model optional."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{key}": value for key, value in self.trainer_defaults.items()})
        parser.add_lightning_class_args(LightningModule, "model", subclass_mode=True, required=False)
        parser.add_lightning_class_args(LightningDataModule, "data", subclass_mode=True, required=False)

    def before_instantiate_classes(self) -> None:
        return None

    def instantiate_classes(self) -> None:
        return None


def parse_run(run: Run) -> Namespace:
    """The parsed config of ``run``, as ``ichor fit --print_config`` shows it (defaults filled, nothing
    built): e.g. its data settings."""
    return _ParsedOnly(args=run, run=False).config


def build_run(run: Run, folder: Path) -> IchorCLI:
    """Trainer, model and data of ``run``, logging to ``folder/logs`` and checkpointing into
    ``folder/checkpoints``: how cross-validation folds and benchmark runs keep their outputs apart.
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    checkpoints = {"checkpoint": {"dirpath": str(Path(folder) / "checkpoints")}}
    cli = IchorCLI(args=run.override(checkpoints), run=False)
    if isinstance(cli.trainer.logger, TensorBoardLogger):
        cli.trainer.logger = TensorBoardLogger(save_dir=str(folder), name="logs", version="")
    return cli


def run_name(config: Namespace) -> str:
    """The stem of the last config file given, else ``ichor``."""
    files = config.get("config") or []
    return Path(str(files[-1])).stem if files else DEFAULT_RUN_NAME


def checkpoint_monitor(model: Namespace) -> tuple[str | None, str]:
    """The model class's ``checkpoint_monitor(init_args)``: the metric to keep the best of, and its mode."""
    module, _, name = str(model.class_path).rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if not hasattr(cls, "checkpoint_monitor"):
        return None, "min"
    return cls.checkpoint_monitor(model.get("init_args") or Namespace())


def header_composition(config: str | os.PathLike) -> list[str]:
    """The ``--config`` files of the ``ichor fit`` command a shipped config's header shows, itself last.

    A config that lists only what differs from a shared fragment names the fragment there
    (``ichor fit --config lightning_configs/common/demo.yaml --config <itself>``); [] when none.
    """
    path = Path(config)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    for line in lines:
        files = re.findall(r"--config (\S+)", line) if line.startswith("#") and "ichor fit" in line else []
        if files and Path(files[-1]).name == path.name:
            return files
    return []


def missing_fragments(configs: Sequence[str]) -> list[str]:
    """Fragments that the headers of ``configs`` compose them with but that were not given (by file name)."""
    given = {Path(config).name for config in configs}
    return [
        fragment
        for config in configs
        for fragment in header_composition(config)[:-1]
        if Path(fragment).name not in given
    ]
