"""The linear model of the benchmark's linear probe and regional-mean baseline.

One model for every kind of per-scan features (frozen encoder embeddings, regional mean CBF),
so that a difference in the table is a difference in the features: standardised features,
then class-balanced logistic regression (classification) or ridge regression (regression).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def fit_and_score(
    features: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, target: str, classification: bool, seed: int = 0
) -> dict[str, float]:
    """Fit on ``train`` rows, return ``test/<metric>`` values on ``test`` rows (the heads' metric names)."""
    x_train, x_test = features.loc[train["path"]].to_numpy(), features.loc[test["path"]].to_numpy()
    if classification:
        y_train, y_test = train[target].astype(str).to_numpy(), test[target].astype(str).to_numpy()
        model = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced", random_state=seed)
        )
        model.fit(x_train, y_train)
        scores = {"test/balanced_accuracy": balanced_accuracy_score(y_test, model.predict(x_test))}
        scores["test/auroc"] = _auroc(y_test, model.predict_proba(x_test), model.classes_)
        return scores
    y_train, y_test = train[target].astype(float).to_numpy(), test[target].astype(float).to_numpy()
    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x_train, y_train)
    predicted = model.predict(x_test)
    constant = np.ptp(predicted) == 0 or np.ptp(y_test) == 0
    return {
        "test/mae": mean_absolute_error(y_test, predicted),
        "test/rmse": float(np.sqrt(np.mean((y_test - predicted) ** 2))),
        "test/pearson": float("nan") if constant else float(pearsonr(predicted, y_test)[0]),
        "test/spearman": float("nan") if constant else float(spearmanr(predicted, y_test)[0]),
        "test/r2": r2_score(y_test, predicted),
    }


def _auroc(y_true: np.ndarray, probabilities: np.ndarray, classes: np.ndarray) -> float:
    """Macro one-vs-rest AUROC over the test classes the model knows; NaN with fewer than two."""
    present = [i for i, c in enumerate(classes) if c in set(y_true)]
    if len(present) < 2:
        return float("nan")
    keep = np.isin(y_true, classes[present])
    if len(classes) == 2:
        return float(roc_auc_score(y_true[keep] == classes[1], probabilities[keep, 1]))
    return float(np.mean([roc_auc_score(y_true[keep] == classes[i], probabilities[keep, i]) for i in present]))
