"""The floor and the ceiling of every task: a linear model on regional mean CBF, and on the oracle.

The floor, the plain baseline every learned encoder must beat: regional mean CBF.

Features per scan, from its CBF map and its own tissue maps (p > 0.5): GM mean, WM mean, and
the mean CBF of four large brain regions - left/right and anterior/posterior halves, split at
the brain's centre in world (RAS) coordinates, so the split does not depend on voxel order.
They go to the same linear model as the encoders' frozen features (``ichor.evaluation.linear``).

The ceiling, on data made by ``ichor synth``: the oracle features its sidecars record per scan
(``SyntheticGroundTruth.oracle``: mean CBF inside each disease pattern's true region relative
to the brain mean, and the log brain mean, measured on the delivered map). A task whose
ceiling is near chance cannot tell encoders apart. For map quality the oracle adds the severity
of each artefact the generator drew (what the simulated raters judged).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = ("gm_mean", "wm_mean", "left_mean", "right_mean", "anterior_mean", "posterior_mean")
TISSUE_THRESHOLD = 0.5


def scan_features(cbf: np.ndarray, gm: np.ndarray, wm: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """Regional mean CBF of one scan (arrays on the same grid)."""
    gm_mask, wm_mask = gm > TISSUE_THRESHOLD, wm > TISSUE_THRESHOLD
    brain = (gm + wm > TISSUE_THRESHOLD) & (cbf != 0)
    if not gm_mask.any() or not wm_mask.any() or not brain.any():
        raise ValueError("no voxel with GM or WM probability above 0.5 (empty tissue map?)")
    voxels = np.argwhere(brain)
    world = voxels @ affine[:3, :3].T + affine[:3, 3]
    centre = world.mean(axis=0)
    values = cbf[brain]
    right, anterior = world[:, 0] >= centre[0], world[:, 1] >= centre[1]
    return {
        "gm_mean": float(cbf[gm_mask].mean()),
        "wm_mean": float(cbf[wm_mask].mean()),
        "left_mean": float(values[~right].mean()),
        "right_mean": float(values[right].mean()),
        "anterior_mean": float(values[anterior].mean()),
        "posterior_mean": float(values[~anterior].mean()),
    }


def regional_features(rows: pd.DataFrame, volume: int | str | None = None) -> pd.DataFrame:
    """FEATURES of every row (indexed by CBF path); errors name the manifest row and file."""
    from ichor.data.manifest import RowError, load_row

    table = {}
    for record in rows.drop_duplicates("path").to_dict("records"):
        cbf, (gm, wm) = load_row(record, ("gm", "wm"), volume, purpose="the regional-mean baseline")
        try:
            table[record["path"]] = scan_features(
                np.asarray(cbf.dataobj),
                np.asarray(gm.dataobj, dtype=np.float32),
                np.asarray(wm.dataobj, dtype=np.float32),
                cbf.affine,
            )
        except ValueError as error:
            raise RowError.at(record, str(error)) from error
    return pd.DataFrame.from_dict(table, orient="index")[list(FEATURES)]


def sidecar_path(cbf_path: str) -> Path:
    """The JSON sidecar beside a CBF map (``x.nii.gz`` -> ``x.json``)."""
    path = Path(cbf_path)
    return path.with_name(path.name.removesuffix(".gz").removesuffix(".nii") + ".json")


def oracle_features(rows: pd.DataFrame) -> pd.DataFrame:
    """The oracle features of every row (indexed by CBF path), from the sidecars ``ichor synth`` wrote."""
    from ichor.data.manifest import RowError

    table = {}
    for record in rows.drop_duplicates("path").to_dict("records"):
        sidecar = sidecar_path(record["path"])
        try:
            truth = json.loads(sidecar.read_text())["SyntheticGroundTruth"]
            severity = {f"{name}_severity": value for name, value in truth["severity"].items()}
            table[record["path"]] = {**truth["oracle"], **severity}
        except (OSError, ValueError, KeyError, TypeError) as error:
            message = "no oracle features in its sidecar (only maps made by `ichor synth` record them)"
            raise RowError.at(record, f"{message}: {type(error).__name__}: {error}", str(sidecar)) from error
    return pd.DataFrame.from_dict(table, orient="index").sort_index(axis=1)
