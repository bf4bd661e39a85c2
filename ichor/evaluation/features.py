"""Pooled encoder features per scan, for analyses outside ICHOR (sklearn, R, statistics).

Scans are harmonised with the encoder's own settings (its metadata: spacing, grid,
normalization), so the features are computed on the input the encoder was trained on.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from ichor.data import CBFDataModule
from ichor.data.datamodule import GLOBAL_CBF, GLOBAL_CBF_NAMES
from ichor.data.schema import ID_COLUMNS
from ichor.evaluation.pooling import REGIONS, Pooling, encode
from ichor.io import atomic_path, write_csv
from ichor.models import ViTEncoder3D
from ichor.models.weights import WeightsError, load_encoder

DATA_SETTINGS = ("spacing", "shape", "normalization")


def datamodule_for_encoder(metadata: dict, manifests: list[str], source: str, **kwargs) -> CBFDataModule:
    """A CBFDataModule that harmonises and normalizes scans as the encoder's pre-training data was."""
    settings = metadata.get("harmonisation") or {}
    missing = [key for key in DATA_SETTINGS if key not in settings]
    if missing:
        raise WeightsError(f"encoder {source} metadata lacks harmonisation {missing}: cannot prepare scans for it")
    extra = {key: settings[key] for key in ("cbf_scale", "volume") if key in settings}
    return CBFDataModule(
        manifests,
        spacing=tuple(settings["spacing"]),
        shape=tuple(settings["shape"]),
        normalization=settings["normalization"],
        augment=None,
        val_fraction=0.0,
        test_fraction=0.0,
        **extra,
        **kwargs,
    )


def predict_datamodule(metadata: dict, manifests: list[str], source: str, **kwargs) -> CBFDataModule:
    """:func:`datamodule_for_encoder`, its scans harmonised into the cache and its ``predict`` split set up."""
    with tempfile.TemporaryDirectory() as audit:  # split table of a datamodule that does not split
        datamodule = datamodule_for_encoder(
            metadata, manifests, source, log_dir=audit, persistent_workers=False, **kwargs
        )
        datamodule.prepare_data()
        datamodule.setup("predict")
    return datamodule


@torch.inference_mode()
def embed_scans(
    encoder_path: str,
    manifests: list[str],
    batch_size: int = 8,
    pooling: Pooling = "brain_mean",
    cache_dir: str = ".ichor_cache",
    num_workers: int = 0,
    on_bad_scan: str = "error",
    device: str = "cpu",
    progress: bool = True,
    skipped_report: str | os.PathLike | None = None,
    blocks: int = 1,
    regions: int = REGIONS,
    loaded: tuple[ViTEncoder3D, dict] | None = None,
) -> pd.DataFrame:
    """One row per usable scan, in manifest order: identity columns, the global CBF scalars
    (``log_brain_mean``, ``log_brain_std``), then features f000, f001, ...

    ``pooling``, ``blocks`` and ``regions`` are those of :func:`ichor.evaluation.pooling.encode`.
    With ``on_bad_scan="skip"``, the scans left out are listed (manifest, row, path, reason) in
    ``skipped_report``, written atomically, when there are any. ``loaded``: the (network,
    metadata) of ``encoder_path`` when the caller holds them already (not read again).
    """
    encoder, metadata = loaded or load_encoder(encoder_path)
    datamodule = predict_datamodule(
        metadata,
        manifests,
        encoder_path,
        cache_dir=cache_dir,
        batch_size=batch_size,
        num_workers=num_workers,
        on_bad_scan=on_bad_scan,
        progress=progress,
    )
    table = embed_loader(
        encoder.to(device), datamodule.predict_dataloader(), pooling, blocks, regions, device, progress
    )
    if skipped_report is not None and datamodule.skipped is not None and len(datamodule.skipped):
        write_csv(datamodule.skipped, skipped_report)
    return table


@torch.no_grad()
def embed_loader(
    encoder: ViTEncoder3D,
    batches: Iterable[dict],
    pooling: Pooling = "brain_mean",
    blocks: int = 1,
    regions: int = REGIONS,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> pd.DataFrame:
    """Features of an encoder in memory over ``batches`` (a CBFDataModule loader): identity columns,
    the global CBF scalars, f000, ...

    The encoder runs in eval mode (dropout off, as for every frozen read-out) and is left in
    the mode it came in, so a pre-training run can call this between its epochs.
    """
    was_training = encoder.training
    encoder.eval()
    identity: dict[str, list] = {}
    features, scalars = [], []
    try:
        for batch in tqdm(batches, desc="embedding", unit="batch", disable=not progress):
            mask = batch.get("mask")
            images = batch["image"].to(device)
            pooled = encode(encoder, images, None if mask is None else mask.to(device), pooling, blocks, regions)
            features.append(pooled.float().cpu())
            scalars.append(batch[GLOBAL_CBF].float().cpu())
            for column in ID_COLUMNS:
                if column in batch:
                    value = batch[column]
                    identity.setdefault(column, []).extend(value.tolist() if isinstance(value, torch.Tensor) else value)
    finally:
        encoder.train(was_training)
    matrix = torch.cat(features).numpy()
    columns = [
        pd.DataFrame(identity),
        pd.DataFrame(torch.cat(scalars).numpy(), columns=list(GLOBAL_CBF_NAMES)),
        pd.DataFrame(matrix, columns=feature_names(matrix.shape[1])),
    ]
    return pd.concat(columns, axis=1)


def global_cbf_table(harmonisation: dict, manifests: list[str], **kwargs) -> pd.DataFrame:
    """The global CBF scalars of every scan of ``manifests`` (indexed by CBF path), from the cache a
    datamodule with these harmonisation settings builds: the values its batches carry."""
    datamodule = predict_datamodule(
        {"harmonisation": harmonisation}, manifests, "the data", num_workers=0, progress=False, **kwargs
    )
    scalars = datamodule.datasets["predict"].global_cbf.numpy()
    table = pd.DataFrame(scalars, index=datamodule.rows["path"].to_numpy(), columns=list(GLOBAL_CBF_NAMES))
    return table.loc[~table.index.duplicated()]


def feature_columns(table: pd.DataFrame, global_cbf: bool) -> pd.DataFrame:
    """The columns a probe reads from an embedding table: f000, ..., and the global CBF scalars with ``global_cbf``.

    The scalars are what a relative or z-scored map no longer shows; every method receives the
    same ones, so that a comparison stays one of the encoders.
    """
    features = table.filter(regex=r"^f\d+$")
    return pd.concat([features, table[list(GLOBAL_CBF_NAMES)]], axis=1) if global_cbf else features


def feature_names(width: int) -> list[str]:
    """f000 ... f767 for ViT-B: zero-padded to at least three digits, so names sort as columns do."""
    digits = max(3, len(str(width - 1)))
    return [f"f{i:0{digits}d}" for i in range(width)]


def check_table_format(out: str | os.PathLike) -> Path:
    """The output path, refused before any work when its format cannot be written."""
    out = Path(out)
    if out.suffix not in (".csv", ".parquet"):
        raise ValueError(f"{out}: the output must end in .csv or .parquet")
    if out.suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise RuntimeError(f"{out}: writing Parquet needs pyarrow (pip install pyarrow), or write .csv")
    return out


def write_table(table: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Atomic CSV, or Parquet (``.parquet``, needs pyarrow)."""
    out = check_table_format(out)
    if out.suffix == ".parquet":
        with atomic_path(out) as temp:
            table.to_parquet(temp, index=False)
        return out
    return write_csv(table, out)
