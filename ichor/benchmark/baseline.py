"""The plain baseline every learned encoder must beat: a linear model on regional mean CBF.

Features per scan, from its CBF map and its own tissue maps (p > 0.5): GM mean, WM mean, and
the mean CBF of four large brain regions - left/right and anterior/posterior halves, split at
the brain's centre in world (RAS) coordinates, so the split does not depend on voxel order.
Classification: logistic regression; regression: ridge; both on standardised features.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

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
    return {"gm_mean": float(cbf[gm_mask].mean()), "wm_mean": float(cbf[wm_mask].mean()),
            "left_mean": float(values[~right].mean()), "right_mean": float(values[right].mean()),
            "anterior_mean": float(values[anterior].mean()), "posterior_mean": float(values[~anterior].mean())}


def regional_features(rows: pd.DataFrame, volume: int | str | None = None) -> pd.DataFrame:
    """FEATURES of every row (indexed by CBF path); errors name the manifest row and file."""
    from ichor.scans import ScanError, load_cbf, load_tissue_map

    table = {}
    for record in rows.drop_duplicates("path").to_dict("records"):
        where = f"{record['manifest']} row {record['row']}"
        missing = [c for c in ("gm", "wm") if pd.isna(record.get(c)) or not str(record.get(c)).strip()]
        if missing:
            raise ValueError(f"{where}: the regional-mean baseline needs gm and wm tissue maps; {', '.join(missing)} missing")
        try:
            cbf = load_cbf(record["path"], volume)
            gm, wm = (np.asarray(load_tissue_map(record[c], reference=cbf).dataobj, dtype=np.float32) for c in ("gm", "wm"))
            table[record["path"]] = scan_features(np.asarray(cbf.dataobj), gm, wm, cbf.affine)
        except (ScanError, ValueError) as error:
            raise ValueError(f"{where} ({record['path']}): {error}") from error
    return pd.DataFrame.from_dict(table, orient="index")[list(FEATURES)]


def fit_and_score(features: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, target: str,
                  classification: bool, seed: int = 0) -> dict[str, float]:
    """Fit on ``train`` rows, return ``test/<metric>`` values on ``test`` rows (the heads' metric names)."""
    x_train, x_test = features.loc[train["path"]].to_numpy(), features.loc[test["path"]].to_numpy()
    if classification:
        y_train, y_test = train[target].astype(str).to_numpy(), test[target].astype(str).to_numpy()
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced",
                                                                   random_state=seed))
        model.fit(x_train, y_train)
        scores = {"test/balanced_accuracy": balanced_accuracy_score(y_test, model.predict(x_test))}
        scores["test/auroc"] = _auroc(y_test, model.predict_proba(x_test), model.classes_)
        return scores
    y_train, y_test = train[target].astype(float).to_numpy(), test[target].astype(float).to_numpy()
    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x_train, y_train)
    predicted = model.predict(x_test)
    constant = np.ptp(predicted) == 0 or np.ptp(y_test) == 0
    return {"test/mae": mean_absolute_error(y_test, predicted),
            "test/rmse": float(np.sqrt(np.mean((y_test - predicted) ** 2))),
            "test/pearson": float("nan") if constant else float(pearsonr(predicted, y_test)[0]),
            "test/spearman": float("nan") if constant else float(spearmanr(predicted, y_test)[0]),
            "test/r2": r2_score(y_test, predicted)}


def _auroc(y_true: np.ndarray, probabilities: np.ndarray, classes: np.ndarray) -> float:
    """Macro one-vs-rest AUROC over the test classes the model knows; NaN with fewer than two."""
    present = [i for i, c in enumerate(classes) if c in set(y_true)]
    if len(present) < 2:
        return float("nan")
    keep = np.isin(y_true, classes[present])
    if len(classes) == 2:
        return float(roc_auc_score(y_true[keep] == classes[1], probabilities[keep, 1]))
    return float(np.mean([roc_auc_score(y_true[keep] == classes[i], probabilities[keep, i]) for i in present]))
