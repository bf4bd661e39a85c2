"""``IchorCLI``: the Lightning configuration of every ICHOR run, shared by ``ichor fit`` and the library.

Every command that trains or parses a config goes through this class (library code as a :class:`Run`), so a
config means the same thing everywhere. What it adds to ``LightningCLI`` is listed in docs/getting-started.md.
"""

from __future__ import annotations

import copy
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
from lightning.pytorch.utilities.rank_zero import rank_zero_only

PRETRAINERS_GROUP = "ichor.pretrainers"
RUNS_DIR = "runs"
DEFAULT_RUN_NAME = "ichor"
TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
# Commands that would score an untrained model without --ckpt_path, and what it would do.
NEEDS_CHECKPOINT = {"predict": "predict", "test": "be tested"}
# `--ckpt_path last|best`: that file of the newest version folder of the run's name that has one.
CHECKPOINT_ALIASES = ("last", "best")
VERSION_PREFIX = "version_"
# The parts of a run with a `seed` of their own, which follows `seed_everything` unless set explicitly.
SEEDED = ("model", "data")


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

    def parse(self, parser: LightningArgumentParser, defaults: bool = True) -> Namespace:
        """The config ``parser`` (the CLI's) makes of the files, the command line and the overrides
        (without ``defaults``: only the values they give)."""
        files = [item for path in self.configs for item in ("--config", path)]
        config = parser.parse_args([*files, *self.command_line], defaults=defaults)
        for overrides in self.overrides:  # a deep copy: jsonargparse turns nested mappings into Namespaces in place
            config = parser.parse_object(copy.deepcopy(dict(overrides)), namespace=config, defaults=defaults)
        return config

    def record(self) -> dict[str, Any]:
        """The run as plain data (JSON), to tell whether a saved result was made by the same run."""
        return {
            "configs": list(self.configs),
            "overrides": list(self.overrides),
            "command_line": list(self.command_line),
        }


class IchorCLI(LightningCLI):
    """LightningCLI with ICHOR's defaults (docs/getting-started.md); any LightningModule / LightningDataModule by class path.

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
        self.claimed: Path | None = None  # the version folder this run claimed
        try:
            super().__init__(LightningModule, LightningDataModule, *args, **kwargs)
        except BaseException:
            if self.claimed is not None and not any(self.claimed.iterdir()):
                self.claimed.rmdir()  # a run that failed before writing anything leaves no empty version_N
            raise

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType | Run) -> None:
        """A :class:`Run`, or Lightning's arguments without its warning that ``args`` and ``sys.argv``
        are both given (``ichor.cli.main(argv)`` called from Python, on purpose); then the seeds that
        were set explicitly, and ``--ckpt_path last|best`` as a file (before Lightning reads its
        hyper-parameters)."""
        if isinstance(args, Run):
            self.config = args.parse(parser)
            given = args.parse(parser, defaults=False)
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                super().parse_arguments(parser, args)
            is_object = isinstance(args, (dict, Namespace))
            given = parser.parse_object(args, defaults=False) if is_object else parser.parse_args(args, defaults=False)
        given = _of_subcommand(given)
        self.seeds_given = {key for key in SEEDED if given.get(f"{key}.init_args.seed") is not None}
        resolve_checkpoint_alias(_of_subcommand(self.config), self.config.get("subcommand"))

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
        """Fill what depends on the config as a whole: run name, seeds, run folder and checkpoint monitor."""
        config = _of_subcommand(self.config)
        if self.subcommand in NEEDS_CHECKPOINT and not config.get("ckpt_path"):
            raise ValueError(
                f"{self.subcommand} needs --ckpt_path, a trained checkpoint (`--ckpt_path best`: the newest run's "
                "best.ckpt, or a file such as runs/<name>/version_<N>/checkpoints/best.ckpt): "
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
        check_accelerator(config.trainer.get("accelerator"))
        follow_seed(config, self.seeds_given, resumed=bool(config.get("ckpt_path")))
        logger = config.trainer.logger
        folder = run_folder(config)
        if _is_tensorboard(logger):
            logger.init_args.save_dir, logger.init_args.name = _logger_place(config)
        checkpoint = config.checkpoint
        if self.subcommand == "fit" and checkpoint.dirpath is None and rank_zero_only.rank == 0:
            version = logger.init_args.get("version") if _is_tensorboard(logger) else None
            if version is None:  # a folder of its own, claimed before another run can take it
                version = claim_version(folder)
                self.claimed = folder / f"{VERSION_PREFIX}{version}"
                if _is_tensorboard(logger):
                    logger.init_args.version = version
            version = version if isinstance(version, str) else f"{VERSION_PREFIX}{version}"
            checkpoint.dirpath = str(folder / version / "checkpoints")
        if checkpoint.monitor is None:
            checkpoint.monitor, checkpoint.mode = checkpoint_monitor(config.model)

    def after_instantiate_classes(self) -> None:
        """Log the datamodule's hyper-parameters beside the model's only when their seeds agree: with a ``seed``
        set for one of them, Lightning would refuse to log two values of one key (config.yaml has both)."""
        model, data = getattr(self, "model", None), getattr(self, "datamodule", None)
        seeds = [part.hparams.get("seed") for part in (model, data) if part is not None]
        if len(seeds) == 2 and None not in seeds and seeds[0] != seeds[1]:
            data._log_hyperparams = False  # what save_hyperparameters(logger=False) would have set

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
        """Only the seeds, which the settings shown depend on."""
        follow_seed(self.config, self.seeds_given)

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


def run_folder(config: Namespace) -> Path:
    """``<save dir>/<name>``, where the version folders of a run's name go: the TensorBoard logger's (its name
    defaulting to :func:`run_name`, its save dir to ``runs``, or to ``trainer.default_root_dir`` when set);
    without one, ``<default_root_dir or runs>/<run name>``."""
    if _is_tensorboard(config.trainer.logger):
        save_dir, name = _logger_place(config)
        return Path(save_dir) / name
    return Path(config.trainer.get("default_root_dir") or RUNS_DIR) / run_name(config)


def _logger_place(config: Namespace) -> tuple[str, str]:
    """The TensorBoard logger's ``save_dir`` and ``name``, ICHOR's defaults filled in."""
    init_args = config.trainer.logger.init_args
    save_dir, name = init_args.get("save_dir"), init_args.get("name")
    root = config.trainer.get("default_root_dir")
    if root and save_dir == RUNS_DIR:
        save_dir = root  # the trainer's root, where the user asked for everything
    return str(save_dir), run_name(config) if name in (None, "lightning_logs") else str(name)


def _is_tensorboard(logger: Any) -> bool:
    return isinstance(logger, Namespace) and str(logger.get("class_path", "")).endswith("TensorBoardLogger")


def _of_subcommand(config: Namespace) -> Namespace:
    """The settings of the parsed subcommand (``fit``, ...), or the whole config of a run without one."""
    subcommand = config.get("subcommand")
    return config[subcommand] if subcommand else config


def versions(folder: Path) -> dict[int, Path]:
    """The ``version_<N>`` folders in ``folder``, by ``N``."""
    found = {}
    for path in folder.glob(f"{VERSION_PREFIX}*"):
        number = path.name.removeprefix(VERSION_PREFIX)
        if number.isdigit() and path.is_dir():
            found[int(number)] = path
    return found


def claim_version(folder: Path) -> int:
    """Create ``folder/version_<N>``, ``N`` one more than the highest there, and return ``N``.

    ``mkdir`` either creates the folder or fails because it exists: a run that loses the race to
    another one started at the same moment takes the next number, so no two runs share a folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    number = max(versions(folder), default=-1) + 1
    while True:
        try:
            (folder / f"{VERSION_PREFIX}{number}").mkdir()
        except FileExistsError:
            number += 1
        else:
            return number


def newest_checkpoint(folder: Path, filename: str) -> Path | None:
    """``version_<N>/checkpoints/<filename>`` in ``folder`` for the highest ``N`` that has one; None if none has."""
    for _, version in sorted(versions(folder).items(), reverse=True):
        if (path := version / "checkpoints" / filename).is_file():
            return path
    return None


def resolve_checkpoint_alias(config: Namespace, subcommand: str | None) -> None:
    """Replace ``ckpt_path: last`` (``best``) by the newest run's ``last.ckpt`` (best checkpoint) of the run's name.

    Not where ``checkpoint.dirpath`` is set (Lightning looks there itself). A fit that finds no
    ``last.ckpt`` starts from scratch with a warning (as Lightning does, so that ``--ckpt_path last``
    can be set before the first run); any other command, or ``best``, refuses.
    """
    alias = config.get("ckpt_path")
    checkpoint = config.get("checkpoint")
    if alias not in CHECKPOINT_ALIASES or checkpoint is None or checkpoint.get("dirpath") is not None:
        return
    filename = f"{ModelCheckpoint.CHECKPOINT_NAME_LAST if alias == 'last' else checkpoint.filename}.ckpt"
    folder = run_folder(config)
    found = newest_checkpoint(folder, filename)
    if found is not None:
        config.ckpt_path = str(found)
        return
    where = folder / f"{VERSION_PREFIX}*" / "checkpoints" / filename
    if subcommand == "fit" and alias == "last":
        warnings.warn(f"--ckpt_path last: no earlier run has a {where}; training from scratch", stacklevel=2)
        config.ckpt_path = None
        return
    raise ValueError(f"--ckpt_path {alias}: no {where} (no earlier run of this config saved one)")


def follow_seed(config: Namespace, given: set[str], resumed: bool = False) -> None:
    """Set the ``seed`` of the model and of the datamodule to ``seed_everything``, except those in ``given``
    (set explicitly): one seed changes everything random in a run. A ``resumed`` run keeps the seed of its
    checkpoint (Lightning put the checkpoint's hyper-parameters into the model's arguments)."""
    seed = config.get("seed_everything")
    seeded = {key: args for key in SEEDED if "seed" in (args := _init_args(config, key))}
    if resumed and "model" in seeded:
        seed, given = seeded["model"].seed, given | {"model"}
    if seed is None or isinstance(seed, bool):  # false: no seeding; true is a drawn number by now
        return
    for key, init_args in seeded.items():
        if key not in given:
            init_args.seed = int(seed)


def _init_args(config: Namespace, key: str) -> Namespace:
    part = config.get(key)
    init_args = part.get("init_args") if isinstance(part, Namespace) else None
    return init_args if isinstance(init_args, Namespace) else Namespace()


def check_accelerator(accelerator: Any) -> None:
    """Refuse, in one line, a GPU accelerator on a machine that has none (Lightning would say it in a traceback)."""
    import torch

    name = accelerator.lower() if isinstance(accelerator, str) else ""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    available["gpu"] = available["cuda"] or available["mps"]
    if name in available and not available[name]:
        raise ValueError(
            f"trainer.accelerator is {accelerator!r}, but no GPU is available on this machine: run on the CPU "
            "with --trainer.accelerator cpu (or `accelerator: cpu` under `trainer:` in the config)"
        )


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
