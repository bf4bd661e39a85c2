"""Encoder weights with their metadata: export from a pre-training checkpoint, load for downstream use.

An export is ``encoder.safetensors`` plus ``encoder.json``, the adaptation record that loading checks (all
differences at once); the decoder is stripped in one place, :func:`encoder_state_from_checkpoint`. What the
record holds: docs/tutorials/share-encoder.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import ichor
from ichor.io import atomic_path, load_checkpoint, load_tensors, write_text
from ichor.models.config import ViTConfig, updated
from ichor.models.lora import LoRA, add_lora, base_fingerprint, merge_lora, save_adapters
from ichor.models.pos_embed import POS_EMBEDS
from ichor.models.vit import ViTEncoder3D

FORMAT = "ichor-encoder"
# v2 added the adaptation record (pooling, software, licence, citation, source) and the
# architecture keys pos_embed, cls_token and norm_eps; v1 exports read with their defaults.
FORMAT_VERSION = 2
WEIGHTS_FILE = "encoder.safetensors"
METADATA_FILE = "encoder.json"
REQUIRED_METADATA = ("format", "format_version", "architecture", "img_size", "harmonisation")
DEFAULT_POOLING = "brain_mean"
ICHOR_CITATION = (
    "Beltran-Urbano et al., ICHOR: A Robust Representation Learning Approach for ASL CBF Maps "
    "with Self-Supervised Masked Autoencoders, arXiv:2603.05247"
)
UNSPECIFIED_LICENCE = "unspecified (ask the weights' authors)"
SOFTWARE = ("torch", "lightning", "safetensors", "monai")

# Checkpoints of every ichor.pretrain.Pretrainer carry two records beside the state dict:
# the data record (harmonisation settings and data summary of the run), and the encoder record
# (method, state-dict prefix of the encoder, preset, and ``config``: the ViTConfig's fields and
# ``img_size``). Every other
# state-dict entry belongs to the pretext task (decoder, projector).
DATA_RECORD_KEY = "ichor_data"
ENCODER_RECORD_KEY = "ichor_encoder"
# Checkpoints of a downstream task in LoRA mode carry the LoRA record instead (:func:`lora_record`).
LORA_RECORD_KEY = "ichor_lora"


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
    checkpoint = load_checkpoint(path)
    if "state_dict" not in checkpoint or not {ENCODER_RECORD_KEY, LORA_RECORD_KEY} & checkpoint.keys():
        raise WeightsError(
            f"{path}: not a Lightning checkpoint of an ichor pre-training run or of a LoRA task (no encoder record)"
        )
    return checkpoint


def software_versions() -> dict[str, str]:
    """Versions of ICHOR and the installed packages its weights depend on, as recorded in ``encoder.json``."""
    versions = {"ichor": ichor.__version__}
    for package in SOFTWARE:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def encoder_metadata(
    config: ViTConfig,
    img_size: tuple[int, int, int] | list[int],
    harmonisation: dict[str, Any],
    pretraining: dict[str, Any],
    licence: str | None = None,
    citation: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The adaptation record of an encoder of ``config`` at ``img_size`` (docs/tutorials/share-encoder.md).

    ``extra`` adds keys such as ``source``.
    """
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": asdict(config),
        "img_size": list(img_size),
        "harmonisation": harmonisation,
        "pooling": DEFAULT_POOLING,
        "pretraining": pretraining,
        "software": software_versions(),
        "licence": licence or UNSPECIFIED_LICENCE,
        "citation": citation or ICHOR_CITATION,
        **extra,
    }


def _metadata_from_checkpoint(
    path: Path, checkpoint: dict[str, Any], licence: str | None = None, citation: str | None = None
) -> dict[str, Any]:
    record = checkpoint[ENCODER_RECORD_KEY]
    architecture = dict(record["config"])
    img_size = architecture.pop("img_size")
    data = checkpoint.get(DATA_RECORD_KEY, {})
    pretraining = {
        "method": record["method"],
        "checkpoint": str(path),
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        **record["pretraining"],
    }
    return encoder_metadata(
        updated(ViTConfig(), architecture, str(path)),
        img_size,
        data.get("harmonisation", {}),
        pretraining,
        licence,
        citation,
        preset=record["preset"],
        data_summary=data.get("data_summary", {}),
    )


def lora_record(
    encoder: ViTEncoder3D,
    settings: LoRA,
    base_source: str | Path,
    base_metadata: dict[str, Any],
    harmonisation: dict[str, Any],
    prefix: str = "encoder.",
) -> dict[str, Any]:
    """What a LoRA task's checkpoint keeps so that its encoder exports merged: the settings, the adapted
    encoder's architecture and state-dict ``prefix``, the harmonisation of the task's data, and the
    base encoder's source, fingerprint and record."""
    return {
        "method": "lora",
        "prefix": prefix,
        "settings": settings.as_dict(),
        "config": {**asdict(encoder.config), "img_size": list(encoder.img_size)},
        "harmonisation": harmonisation,
        "base": {"source": str(base_source), "sha256": base_fingerprint(encoder), "metadata": base_metadata},
    }


def _lora_encoder(
    path: Path, checkpoint: dict[str, Any], licence: str | None = None, citation: str | None = None
) -> tuple[ViTEncoder3D, LoRA, dict[str, Any]]:
    """A LoRA task's encoder with its adapters (not merged), their settings, and the merged encoder's record.

    The record is the base encoder's, with this encoder's architecture and harmonisation, and
    ``adaptation`` saying what was merged into it.
    """
    record = checkpoint[LORA_RECORD_KEY]
    settings = LoRA(**record["settings"])
    architecture = dict(record["config"])
    img_size = tuple(architecture.pop("img_size"))
    encoder = add_lora(ViTEncoder3D(updated(ViTConfig(), architecture, str(path)), img_size), settings)
    load_state(encoder, encoder_state_from_checkpoint(checkpoint["state_dict"], record, str(path)), path)
    base = record["base"]["metadata"]
    adaptation = {
        **settings.as_dict(),
        "method": "lora",
        "merged": True,
        "checkpoint": str(path),
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "base": {k: record["base"][k] for k in ("source", "sha256")},
    }
    metadata = {
        **base,
        **encoder_metadata(
            encoder.config,
            encoder.img_size,
            record["harmonisation"],
            base.get("pretraining", {}),
            licence or base.get("licence"),
            citation or base.get("citation"),
        ),
        "adaptation": adaptation,
    }
    return encoder, settings, metadata


def _checkpoint_encoder(
    path: Path,
    checkpoint: dict[str, Any],
    licence: str | None = None,
    citation: str | None = None,
    adapters_out: Path | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Encoder weights and record of a checkpoint: a pre-training run's encoder, or a LoRA task's with its
    adapters merged (and first saved alone to ``adapters_out``, when given)."""
    if LORA_RECORD_KEY not in checkpoint:
        metadata = _metadata_from_checkpoint(path, checkpoint, licence, citation)
        return encoder_state_from_checkpoint(
            checkpoint["state_dict"], checkpoint[ENCODER_RECORD_KEY], str(path)
        ), metadata
    encoder, settings, metadata = _lora_encoder(path, checkpoint, licence, citation)
    if adapters_out is not None:
        save_adapters(encoder, settings, adapters_out, metadata["adaptation"]["base"])
    return merge_lora(encoder).state_dict(), metadata


def check_export_target(out_dir: str | Path, overwrite: bool) -> Path:
    """The weights file of an export folder, refused when it exists and ``overwrite`` is not given."""
    target = Path(out_dir) / WEIGHTS_FILE
    if target.exists() and not overwrite:
        raise WeightsError(f"{target} exists: pass overwrite=True (--overwrite) to replace it")
    return target


def write_export(
    state: dict[str, torch.Tensor], metadata: dict[str, Any], out_dir: str | Path, overwrite: bool = False
) -> Path:
    """Write an export folder: ``encoder.safetensors`` (float32) and ``encoder.json``, each atomically."""
    out_dir = Path(out_dir)
    target = check_export_target(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous() for k, v in state.items()}
    with atomic_path(target) as temp:
        save_file(tensors, str(temp), metadata={"format": FORMAT})
    write_text(out_dir / METADATA_FILE, json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return out_dir


def export_encoder(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    licence: str | None = None,
    citation: str | None = None,
) -> Path:
    """Write ``encoder.safetensors`` and ``encoder.json`` from a pre-training checkpoint (MAE, SimCLR, Models
    Genesis, ...), or from a LoRA task's checkpoint: its encoder merged, and its adapters alone beside it."""
    checkpoint_path = Path(checkpoint_path)
    check_export_target(out_dir, overwrite)  # before reading a large checkpoint
    checkpoint = _read_checkpoint(checkpoint_path)
    state, metadata = _checkpoint_encoder(checkpoint_path, checkpoint, licence, citation, adapters_out=Path(out_dir))
    return write_export(state, metadata, out_dir, overwrite=True)


def read_metadata(export_dir: str | Path) -> dict[str, Any]:
    """The checked ``encoder.json`` of an export folder."""
    path = Path(export_dir) / METADATA_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: not found; is {export_dir} an `ichor export-encoder` folder?")
    metadata = json.loads(path.read_text())
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise WeightsError(f"{path}: missing metadata {missing}")
    check_compatibility(metadata, path)
    return metadata


def check_compatibility(metadata: dict[str, Any], source: str | Path) -> None:
    """Refuse a record this installation cannot use, naming every difference at once."""
    problems = []
    if metadata["format"] != FORMAT or metadata["format_version"] > FORMAT_VERSION:
        written_by = metadata.get("software", {}).get("ichor", metadata.get("ichor_version", "?"))
        problems.append(
            f"format {metadata['format']!r} v{metadata['format_version']} (written by ichor {written_by}) "
            f"is not readable by ichor {ichor.__version__} ({FORMAT!r} up to v{FORMAT_VERSION})"
        )
    unknown = sorted(set(metadata["architecture"]) - {f.name for f in fields(ViTConfig)})
    if unknown:
        problems.append(f"architecture key(s) {', '.join(unknown)} unknown to this ichor's ViTConfig")
    kind = metadata["architecture"].get("pos_embed", "sincos")
    if kind not in POS_EMBEDS:
        problems.append(f"position embedding {kind!r} is not one of {', '.join(POS_EMBEDS)}")
    shape = metadata["harmonisation"].get("shape")
    if shape is not None and list(shape) != list(metadata["img_size"]):
        problems.append(f"harmonisation shape {list(shape)} differs from img_size {list(metadata['img_size'])}")
    if problems:
        raise WeightsError(f"{source}: " + "; ".join(problems))


def load_state(encoder: ViTEncoder3D, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``load_state_dict(strict=True)``, after naming every key and shape that differs from the architecture."""
    expected = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = []
    if missing := sorted(expected.keys() - got.keys()):
        problems.append(f"missing {', '.join(missing)}")
    if unexpected := sorted(got.keys() - expected.keys()):
        problems.append(f"unexpected {', '.join(unexpected)}")
    problems += [
        f"{k}: {got[k]} in the weights, {expected[k]} in the architecture"
        for k in sorted(expected.keys() & got.keys())
        if got[k] != expected[k]
    ]
    if problems:
        raise WeightsError(f"{source}: the weights do not fit the recorded architecture: " + "; ".join(problems))
    encoder.load_state_dict(state, strict=True)


def load_encoder(
    source: str | Path, img_size: tuple[int, int, int] | None = None
) -> tuple[ViTEncoder3D, dict[str, Any]]:
    """Build the encoder of an export folder, a pre-training checkpoint or a LoRA task's checkpoint (adapters
    merged), with its metadata.

    ``img_size`` other than the pre-training shape regenerates fixed position embeddings (weights
    are shape-independent) or interpolates learned ones; it must still be a multiple of the patch size.
    """
    source = Path(source)
    if source.is_dir():
        metadata = read_metadata(source)
        state = load_tensors(source / WEIGHTS_FILE)
    else:
        state, metadata = _checkpoint_encoder(source, _read_checkpoint(source))
    config = updated(ViTConfig(), metadata["architecture"], str(source))  # keys a v1 export lacks: defaults
    encoder = ViTEncoder3D(config, tuple(metadata["img_size"]))
    load_state(encoder, state, source)
    if img_size is not None and tuple(img_size) != encoder.img_size:
        encoder.set_img_size(tuple(img_size))
    return encoder, metadata
