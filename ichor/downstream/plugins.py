"""Task heads as plugins: the ``TaskHead`` base class and their discovery through entry points.

A head is any ``TaskHead`` subclass that an installed distribution registers in the
``ichor.heads`` entry-point group (``name = "package.module:Class"``). ICHOR's own heads
(package ``ichor_heads``) are registered the same way, so a third-party head is a peer of
the built-in ones: a config names it by its short name (``head: classification``) or by
class path (``head: my_pkg.heads.SurvivalHead``), with ``head_args`` for its constructor.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar

import torch
from torch import nn
from torchmetrics import MetricCollection

GROUP = "ichor.heads"


class TaskHead(nn.Module):
    """A downstream task: pooled encoder features (B, in_features) in, task outputs out.

    Subclasses define ``forward``, ``loss``, ``prepare_targets``, ``metrics`` and
    ``predictions``; ``complete_args`` and ``figures`` are optional. Constructor arguments
    other than ``in_features`` are the config's ``head_args``; they must be plain values
    (numbers, strings, lists) because they are saved with the checkpoint.

    ``monitor`` / ``mode`` name the validation metric that checkpointing and early stopping
    should follow (after the ``val/`` prefix).
    """

    monitor: ClassVar[str] = "loss"
    mode: ClassVar[str] = "min"

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features

    @classmethod
    def complete_args(cls, args: dict[str, Any], train_targets: list) -> dict[str, Any]:
        """Fill in arguments learnt from the training targets (class names, target scale).

        Called once before the head is built, with the raw manifest values of the training
        scans; the returned arguments are saved in the checkpoint, so prediction on new
        (even unlabelled) data rebuilds the same head.
        """
        return dict(args)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prepare_targets(self, values: list | torch.Tensor) -> torch.Tensor:
        """Raw batch values of the target column (str list or tensor) -> what ``loss`` takes."""
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self) -> MetricCollection:
        """A fresh collection; it is updated with ``metric_inputs(outputs, targets)``."""
        raise NotImplementedError

    def metric_inputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(preds, target) as the metrics expect them (e.g. probabilities, original units)."""
        return outputs, targets

    def predictions(self, outputs: torch.Tensor) -> dict[str, list]:
        """Per-scan prediction columns for the predictions CSV (``prediction`` first)."""
        raise NotImplementedError

    def figures(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """Matplotlib figures of one validation epoch (name -> Figure); none by default."""
        return {}


class HeadError(ValueError):
    """A head that cannot be found or is not a TaskHead; the message lists what is installed."""


@dataclass(frozen=True)
class HeadPlugin:
    """One installed head: its entry-point name, where it points, and who provides it."""

    name: str
    value: str  # "package.module:Class"
    distribution: str  # "name version", or "" when unknown

    def load(self) -> type[TaskHead]:
        return _checked(entry_points(group=GROUP, name=self.name)[self.name].load(), self.name)


def installed_heads() -> dict[str, HeadPlugin]:
    """Heads registered in the ``ichor.heads`` group of the installed distributions, by name."""
    heads: dict[str, HeadPlugin] = {}
    for point in entry_points(group=GROUP):
        heads.setdefault(point.name, HeadPlugin(point.name, point.value, _distribution(point)))
    return dict(sorted(heads.items()))


def resolve_head(name: str) -> type[TaskHead]:
    """The head class for a short name (an entry point) or a class path ``pkg.mod.Class``."""
    heads = installed_heads()
    if name in heads:
        return heads[name].load()
    if "." in name:
        module_name, _, class_name = name.replace(":", ".").rpartition(".")
        try:
            return _checked(getattr(importlib.import_module(module_name), class_name), name)
        except (ImportError, AttributeError) as error:
            raise HeadError(f"head {name!r}: cannot import it ({error})") from error
    known = ", ".join(heads) or "none (is ichor installed, `pip install -e .`?)"
    raise HeadError(f"unknown head {name!r}: installed heads are {known}; or give a class path 'package.module.Class'")


def head_arguments(cls: type[TaskHead]) -> list[inspect.Parameter]:
    """The constructor arguments a config may set in ``head_args`` (all but ``in_features``)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [
        p
        for p in parameters
        if p.name not in ("self", "in_features") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _checked(obj: Any, name: str) -> type[TaskHead]:
    if not (inspect.isclass(obj) and issubclass(obj, TaskHead)):
        raise HeadError(f"head {name!r} is {obj!r}, not a subclass of ichor.downstream.TaskHead")
    return obj


def _distribution(point: EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    return f"{dist.metadata['Name']} {dist.version}" if dist is not None else ""
