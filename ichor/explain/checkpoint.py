"""A trained downstream checkpoint back as a ready ``DownstreamTask``, outside a Trainer.

``ichor predict`` rebuilds a task from its config; ``ichor explain`` has only the checkpoint,
so the encoder, head and input grid are rebuilt from what the checkpoint saved: the task's
hyper-parameters (encoder source, head and its completed arguments, pooling), its label
column, and the datamodule's harmonisation (grid, spacing, intensity normalisation).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from ichor.data.harmonise import HarmonisationSettings
from ichor.downstream.task import DownstreamTask
from ichor.io import load_checkpoint
from ichor.models.weights import WeightsError, load_encoder

# Lightning saves the datamodule's constructor arguments under this key.
DATAMODULE_KEY = "datamodule_hyper_parameters"


def harmonisation_of(checkpoint: dict[str, Any], encoder: str) -> dict[str, Any]:
    """How the task's training scans were harmonised: the datamodule's record, else the encoder's metadata."""
    data = checkpoint.get(DATAMODULE_KEY) or {}
    if "spacing" in data and "shape" in data:
        settings = HarmonisationSettings.create(data["spacing"], data["shape"], data.get("volume")).as_dict()
        settings["normalization"] = data.get("normalization", "scale")
        if settings["normalization"] == "scale":
            settings["cbf_scale"] = data.get("cbf_scale", 100.0)
        return settings
    return dict(load_encoder(encoder)[1].get("harmonisation") or {})


def load_task(path: str | Path, device: str = "cpu") -> tuple[DownstreamTask, dict[str, Any]]:
    """The task of a ``DownstreamTask`` checkpoint in eval mode on ``device``, and its harmonisation settings.

    The encoder folder the task was trained from must still exist (its metadata gives the
    architecture); the weights themselves come from the checkpoint, loaded strictly.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found")
    checkpoint = load_checkpoint(path)
    hparams = (checkpoint.get("hyper_parameters") or {}) if isinstance(checkpoint, dict) else {}
    if "encoder" not in hparams or "head" not in hparams or "state_dict" not in checkpoint:
        raise WeightsError(f"{path}: not a checkpoint of a downstream task (`ichor fit` with a task config)")
    accepted = inspect.signature(DownstreamTask.__init__).parameters
    task = DownstreamTask(**{key: value for key, value in hparams.items() if key in accepted})
    task.on_load_checkpoint(checkpoint)
    settings = harmonisation_of(checkpoint, hparams["encoder"])
    try:
        task.configure_encoder(settings)
    except WeightsError as error:
        raise WeightsError(f"{path}: the task's encoder cannot be rebuilt ({error})") from error
    task.configure_head([])  # the head's arguments were completed at training and saved
    task.load_state_dict(checkpoint["state_dict"])
    return task.to(device).eval(), settings
