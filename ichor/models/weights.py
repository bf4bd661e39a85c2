"""Encoder weights with their metadata: export from a pre-training checkpoint, load for downstream use.

An export is a folder with ``encoder.safetensors`` (encoder weights only) and ``encoder.json``
(everything needed to use them: architecture, patch, input shape, voxel spacing, intensity
normalisation, data summary, pre-training settings). Loading checks that metadata, and the
decoder is stripped in exactly one place, :func:`encoder_state_from_checkpoint`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import ichor
from ichor.data.atomic import atomic_path, write_text
from ichor.models.vit import ViTEncoder3D

FORMAT = "ichor-encoder"
FORMAT_VERSION = 1
WEIGHTS_FILE = "encoder.safetensors"
METADATA_FILE = "encoder.json"
REQUIRED_METADATA = ("format", "format_version", "architecture", "img_size", "harmonisation")

# Checkpoints of every ichor.pretrain.Pretrainer carry two records beside the state dict:
# the data record (harmonisation settings and data summary of the run), and the encoder record
# (method, state-dict prefix of the encoder, preset and constructor arguments). Every other
# state-dict entry belongs to the pretext task (decoder, projector).
DATA_RECORD_KEY = "ichor_data"
ENCODER_RECORD_KEY = "ichor_encoder"


class WeightsError(ValueError):
    """An export or checkpoint that cannot give a usable encoder; the message says why."""


def encoder_state_from_checkpoint(
    state_dict: dict[str, torch.Tensor], record: dict[str, Any], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Keep the encoder's weights (prefix stripped) and drop the pretext task's (decoder, projector).

    This is the only place where pretext weights are discarded, so that nothing is silently
    ignored by a ``strict=False`` load elsewhere.
    """
    prefix = record["prefix"]
    encoder = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not encoder:
        raise WeightsError(f"{source}: no '{prefix}*' keys for the {record['method']} encoder its record names")
    return encoder


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found")
    # Lightning checkpoints hold loop and callback state besides tensors: load only checkpoints you trust.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "state_dict" not in checkpoint or ENCODER_RECORD_KEY not in checkpoint:
        raise WeightsError(f"{path}: not a Lightning checkpoint of an ichor pre-training run (no encoder record)")
    return checkpoint


def _metadata_from_checkpoint(path: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    record = checkpoint[ENCODER_RECORD_KEY]
    data = checkpoint.get(DATA_RECORD_KEY, {})
    architecture = {k: v for k, v in record["config"].items() if k != "img_size"}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ichor_version": ichor.__version__,
        "preset": record["preset"],
        "architecture": architecture,
        "img_size": list(record["config"]["img_size"]),
        "harmonisation": data.get("harmonisation", {}),
        "data_summary": data.get("data_summary", {}),
        "pretraining": {
            "method": record["method"],
            "checkpoint": str(path),
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
            **record["pretraining"],
        },
    }


def export_encoder(checkpoint_path: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``encoder.safetensors`` and ``encoder.json`` from a pre-training checkpoint (MAE, SimCLR, Models Genesis, ...)."""
    checkpoint_path, out_dir = Path(checkpoint_path), Path(out_dir)
    target = out_dir / WEIGHTS_FILE
    if target.exists() and not overwrite:
        raise WeightsError(f"{target} exists: pass overwrite=True (--overwrite) to replace it")
    checkpoint = _read_checkpoint(checkpoint_path)
    metadata = _metadata_from_checkpoint(checkpoint_path, checkpoint)
    state = encoder_state_from_checkpoint(
        checkpoint["state_dict"], checkpoint[ENCODER_RECORD_KEY], str(checkpoint_path)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous() for k, v in state.items()}
    with atomic_path(target) as temp:
        save_file(tensors, str(temp), metadata={"format": FORMAT})
    write_text(out_dir / METADATA_FILE, json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return out_dir


def read_metadata(export_dir: str | Path) -> dict[str, Any]:
    """The checked ``encoder.json`` of an export folder."""
    path = Path(export_dir) / METADATA_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: not found; is {export_dir} an `ichor export-encoder` folder?")
    metadata = json.loads(path.read_text())
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise WeightsError(f"{path}: missing metadata {missing}")
    if metadata["format"] != FORMAT or metadata["format_version"] > FORMAT_VERSION:
        raise WeightsError(
            f"{path}: format {metadata['format']!r} v{metadata['format_version']} is not readable by "
            f"ichor {ichor.__version__} ({FORMAT!r} up to v{FORMAT_VERSION})"
        )
    return metadata


def load_encoder(
    source: str | Path, img_size: tuple[int, int, int] | None = None
) -> tuple[ViTEncoder3D, dict[str, Any]]:
    """Build the encoder of an export folder or a pre-training checkpoint, with its metadata.

    ``img_size`` other than the pre-training shape regenerates the fixed position embeddings
    (weights are shape-independent); it must still be a multiple of the patch size.
    """
    source = Path(source)
    if source.is_dir():
        metadata = read_metadata(source)
        state = load_file(str(source / WEIGHTS_FILE))
    else:
        checkpoint = _read_checkpoint(source)
        metadata = _metadata_from_checkpoint(source, checkpoint)
        state = encoder_state_from_checkpoint(checkpoint["state_dict"], checkpoint[ENCODER_RECORD_KEY], str(source))
    encoder = ViTEncoder3D(img_size=tuple(metadata["img_size"]), **metadata["architecture"])
    encoder.load_state_dict(state, strict=True)
    if img_size is not None and tuple(img_size) != encoder.img_size:
        encoder.set_img_size(tuple(img_size))
    return encoder, metadata
