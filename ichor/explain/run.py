"""``ichor explain`` as a library call: attribution maps of a trained task for every scan of some manifests.

What it writes (atomically; existing files refused unless ``overwrite``, no output may be an input):
docs/tutorials/explain.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ichor.data.datamodule import GLOBAL_CBF
from ichor.data.manifest import read_manifests
from ichor.data.scans import ScanError, load_cbf
from ichor.downstream.task import DownstreamTask
from ichor.evaluation.features import datamodule_for_encoder, predict_datamodule
from ichor.explain.checkpoint import load_task
from ichor.explain.figure import attribution_figure, save_figure
from ichor.explain.maps import GroupAverage, patch_volume, to_source_grid
from ichor.explain.occlusion import occlusion
from ichor.io import atomic_path, check_output, confined, write_csv

SUMMARY_FILE = "explanations.csv"
GROUP_FOLDER = "group"
UNLABELLED = "unlabelled"  # group of rows without a value in the group column


def explained_class(task: DownstreamTask, name: str | None) -> int | None:
    """Index of the class to explain (None: each scan's predicted class, or a one-output head)."""
    classes = getattr(task.head, "classes", None)
    if name is None or classes is None:
        if name is not None:
            raise ValueError(f"--class {name!r}: the task's head ({task.hparams.head}) has no classes")
        return None
    if name not in classes:
        raise ValueError(f"--class {name!r} is not one of the task's classes {classes}")
    return classes.index(name)


def scan_stem(row) -> Path:
    """``<study>/sub-<subject>[_ses-<session>]``, each label made file-name safe."""
    name = f"sub-{_label(row.subject)}" + (f"_ses-{_label(row.session)}" if row.session else "")
    return Path(_label(row.study)) / name


def group_labels(rows: pd.DataFrame, column: str | None) -> list[str]:
    """Each row's group: its value in ``column`` ("all" without one), ``unlabelled`` when empty."""
    if column is None:
        return ["all"] * len(rows)
    if column not in rows.columns:
        raise ValueError(f"group column {column!r} is not in the manifests (columns: {', '.join(rows.columns)})")
    values = rows[column]
    return [UNLABELLED if pd.isna(v) or str(v) == "" else _label(v) for v in values]


def _label(value) -> str:
    """A file-name-safe group label; integral numbers without ".0"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(value))
    return safe if safe.strip(".") else safe.replace(".", "_")  # "." and ".." name folders, not scans


def explain(
    checkpoint: str | Path,
    manifests: Sequence[str],
    out: str | Path,
    class_name: str | None = None,
    group_by: str | None = None,
    batch_size: int = 16,
    cache_dir: str = ".ichor_cache",
    num_workers: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Write per-scan and per-group attribution maps (docs/tutorials/explain.md); returns the summary table.

    ``class_name`` is the class explained in every scan (default: each scan's predicted class);
    ``group_by`` the manifest column whose values form the groups (default: the task's label
    column for a classifier, else one group of all scans).
    """
    out = Path(out)
    rows = read_manifests(manifests)
    task, settings = load_task(checkpoint, device)
    class_index = explained_class(task, class_name)
    classes = getattr(task.head, "classes", None)
    groups = group_labels(rows, group_by or (task.target if classes is not None else None))
    inputs = [*manifests, checkpoint, *rows["path"]]
    stems = [scan_stem(row) for row in rows.itertuples()]
    planned = [out / SUMMARY_FILE]
    planned += [confined(out, f"{stem}_attribution.{ext}") for stem in stems for ext in ("nii.gz", "png")]
    planned += [
        confined(out, f"{GROUP_FOLDER}/{group}_attribution.{ext}") for group in set(groups) for ext in ("nii.gz", "png")
    ]
    for path in planned:
        check_output(path, inputs, overwrite)

    scans = {"cache_dir": cache_dir, "batch_size": 1, "num_workers": num_workers, "progress": progress}
    check_scans(datamodule_for_encoder({"harmonisation": settings}, list(manifests), str(checkpoint), **scans), rows)
    datamodule = predict_datamodule({"harmonisation": settings}, list(manifests), str(checkpoint), **scans)
    dataset = datamodule.datasets["predict"]
    entries = [datamodule.cache.lookup(path) for path in rows["path"]]
    averages = {  # per group: (attribution, model input) means
        group: tuple(
            GroupAverage([e.affine for e, g in zip(entries, groups) if g == group], settings["shape"]) for _ in range(2)
        )
        for group in sorted(set(groups))
    }
    encoder = task.encoder
    summary = []
    for i, row in enumerate(tqdm(list(rows.itertuples()), desc="explaining", unit="scan", disable=not progress)):
        where = f"{row.manifest} row {row.row} ({Path(row.path).name})"
        scan = dataset[i]
        image, brain = scan["image"].to(device), scan["mask"].to(device)
        try:
            index = class_index
            if index is None and classes is not None:
                with torch.inference_mode():
                    index = int(task(scan_batch(scan, device)).argmax(-1)[0])
            attribution, score = occlusion(task, image, brain, index, batch_size, scan[GLOBAL_CBF].to(device))
            source = load_cbf(row.path, volume=settings.get("volume"))
        except (ValueError, RuntimeError, OSError) as error:
            raise ValueError(f"{where}: {error}") from error
        brain_np, cbf = brain[0].cpu().numpy(), image[0].cpu().numpy()
        volume = np.where(brain_np, patch_volume(attribution.cpu().numpy(), encoder.grid, encoder.patch_size), 0)
        native = to_source_grid(volume, entries[i].affine, source)
        stem = out / stems[i]
        save_nifti(native, source, Path(f"{stem}_attribution.nii.gz"))
        explained = classes[index] if classes is not None and index is not None else "output"
        title = f"{stems[i]}: attribution towards {explained} (score {score:.3g}), harmonised grid"
        save_figure(attribution_figure(cbf, volume, title), Path(f"{stem}_attribution.png"))
        for average, values in zip(averages[groups[i]], (volume, cbf)):
            average.add(values, brain_np, entries[i].affine)
        summary.append(
            {
                **{column: getattr(row, column) for column in ("subject", "session", "study", "path")},
                "group": groups[i],
                "explained": explained,
                "score": score,
                "positive_mass": float(volume[volume > 0].sum()),
                "negative_mass": float(-volume[volume < 0].sum()),
                "attribution": f"{stems[i]}_attribution.nii.gz",
                "figure": f"{stems[i]}_attribution.png",
            }
        )
    for group, (attribution_mean, cbf_mean) in averages.items():
        mean = attribution_mean.image()
        path = out / GROUP_FOLDER / f"{group}_attribution"
        save_nifti(np.asarray(mean.dataobj), mean, Path(f"{path}.nii.gz"))
        title = f"group {group}: mean attribution of {groups.count(group)} scan(s) (harmonisation lattice)"
        underlay = np.asarray(cbf_mean.image().dataobj)
        save_figure(attribution_figure(underlay, np.asarray(mean.dataobj), title), Path(f"{path}.png"))
    table = pd.DataFrame(summary)
    write_csv(table, out / SUMMARY_FILE)
    return table


def check_scans(datamodule, rows: pd.DataFrame) -> None:
    """Harmonise the scans into the cache; refuse bad ones, with explain's own remedy (it has no on_bad_scan: skip)."""
    problems = datamodule.problem_messages(rows, datamodule.build_cache(rows["path"]))
    if problems:
        count = f"{len(problems)} bad scan" + ("s" if len(problems) != 1 else "")
        raise ScanError(
            f"{count} (ichor explain explains every row it is given: fix them, or remove their rows from the "
            "manifest):\n" + "\n".join(f"  {problem}" for problem in problems)
        )


def scan_batch(scan: dict, device: str) -> dict:
    """One dataset item as a batch of one, for the task's forward."""
    return {key: scan[key][None].to(device) for key in ("image", "mask", GLOBAL_CBF)}


def save_nifti(data: np.ndarray, like, path: Path) -> None:
    """``data`` as float32 NIfTI with ``like``'s affine and header (orientation codes, units), atomically."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), like.affine, header=like.header)
    image.header.set_data_dtype(np.float32)
    image.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as temp:
        nib.save(image, temp)
