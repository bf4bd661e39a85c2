"""The linear probe: the one linear model of the benchmark, the online probe and the regional-mean baseline.

One model for every kind of per-scan features (frozen encoder embeddings, regional mean CBF),
so that a difference in a table is a difference in the features: standardised features, then
class-balanced logistic regression (classification) or ridge regression (regression), whose
regularisation (C or alpha) is chosen by inner cross-validation over a fixed grid, on the
training scans only and grouped by subject. A fixed C is not a probe result: the best strength
depends on the feature width, the number of labelled scans and the signal, so a fixed one
favours whichever features happen to suit it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
)
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

# Log-spaced grids, wide enough for a few to a few thousand standardised features and tens to
# thousands of scans; ties go to the stronger regularisation (GridSearchCV keeps the first best).
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))  # logistic regression: inverse strength
ALPHA_GRID = tuple(float(a) for a in np.logspace(-1, 5, 7))  # ridge: strength
INNER_FOLDS = 5
# Without enough scans for two inner folds, sklearn's default strength is used and reported.
DEFAULT_REGULARISATION = 1.0


@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: the pipeline refitted on all training scans at the chosen strength.

    ``regularisation`` is the chosen C (classification) or alpha (regression); ``inner_folds``
    is how many inner folds chose it (0: too few scans or subjects, the default was used).
    """

    model: Pipeline
    regularisation: float
    inner_folds: int
    classification: bool

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(x)

    @property
    def classes_(self) -> np.ndarray:
        return self.model.classes_


def fit_probe(
    x: np.ndarray,
    y: np.ndarray,
    classification: bool,
    groups: Sequence | np.ndarray | None = None,
    grid: Sequence[float] | None = None,
    folds: int = INNER_FOLDS,
    seed: int = 0,
) -> LinearProbe:
    """Fit the linear probe on training scans ``x`` (N, D), ``y`` (N,), choosing C or alpha by inner CV.

    ``groups`` (N,), usually the subject, keeps all scans of a group in one inner fold. The
    inner score is the log loss (classification, a proper score that any number of classes
    shares) or the squared error (regression, what ridge minimises).
    """
    grid = list(grid or (C_GRID if classification else ALPHA_GRID))
    name = "logisticregression__C" if classification else "ridge__alpha"
    model = _pipeline(classification, seed)
    splitter = inner_splitter(y, groups, classification, folds, seed)
    if splitter is None:
        log.warning("linear probe: too few scans or subjects for inner cross-validation; strength fixed at 1")
        model.set_params(**{name: DEFAULT_REGULARISATION}).fit(x, y)
        return LinearProbe(model, DEFAULT_REGULARISATION, 0, classification)
    search = GridSearchCV(
        model,
        {name: grid},
        scoring="neg_log_loss" if classification else "neg_mean_squared_error",
        cv=splitter,
    )
    search.fit(x, y, groups=None if groups is None else np.asarray(groups))
    return LinearProbe(
        search.best_estimator_, float(search.best_params_[name]), splitter.get_n_splits(), classification
    )


def inner_splitter(
    y: np.ndarray, groups: Sequence | np.ndarray | None, classification: bool, folds: int, seed: int
) -> StratifiedGroupKFold | StratifiedKFold | GroupKFold | KFold | None:
    """Inner folds of the training scans: grouped when ``groups`` is given, stratified for classes.

    At most ``folds``, and no more than the smallest class has subjects (so that every inner
    training set holds every class); None when fewer than two folds are possible.
    """
    y = np.asarray(y)
    units = np.arange(len(y)) if groups is None else np.asarray(groups)
    if classification:
        per_class = pd.Series(units).groupby(y).nunique()
        n = min(folds, int(per_class.min())) if len(per_class) > 1 else 0
    else:
        n = min(folds, len(np.unique(units)))
    if n < 2:
        return None
    if classification:
        if groups is None:
            return StratifiedKFold(n, shuffle=True, random_state=seed)
        return StratifiedGroupKFold(n, shuffle=True, random_state=seed)
    return KFold(n, shuffle=True, random_state=seed) if groups is None else GroupKFold(n)


def _pipeline(classification: bool, seed: int) -> Pipeline:
    estimator: BaseEstimator = (
        LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed) if classification else Ridge()
    )
    return make_pipeline(StandardScaler(), estimator)


def fit_and_score(
    features: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, target: str, classification: bool, seed: int = 0
) -> dict[str, float]:
    """Fit on ``train`` rows (inner CV grouped by their subject), return ``test/<metric>`` values on ``test`` rows.

    Also returns ``probe/regularisation`` (the chosen C or alpha) and ``probe/inner_folds``:
    outside ``test/``, so the benchmark's summaries leave them out.
    """
    x_train, x_test = features.loc[train["path"]].to_numpy(), features.loc[test["path"]].to_numpy()
    groups = train["subject"].to_numpy() if "subject" in train.columns else None
    cast = str if classification else float
    y_train, y_test = train[target].astype(cast).to_numpy(), test[target].astype(cast).to_numpy()
    probe = fit_probe(x_train, y_train, classification, groups, seed=seed)
    chosen = {"probe/regularisation": probe.regularisation, "probe/inner_folds": float(probe.inner_folds)}
    if classification:
        scores = classification_scores(y_test, probe.predict(x_test), probe.predict_proba(x_test), probe.classes_)
    else:
        scores = regression_scores(y_test, probe.predict(x_test))
    return {**{f"test/{name}": value for name, value in scores.items()}, **chosen}


def cross_validated_scores(
    x: np.ndarray,
    y: np.ndarray,
    classification: bool,
    groups: Sequence | np.ndarray | None = None,
    folds: int = INNER_FOLDS,
    seed: int = 0,
) -> dict[str, float]:
    """Scores of the probe on data without a test set: nested cross-validation, outer folds as the inner ones.

    Each outer fold's probe is fitted (with its own inner CV) on the other folds; the scores are
    those of the pooled out-of-fold predictions, steadier than a mean over small folds.
    """
    y = np.asarray(y)
    groups = None if groups is None else np.asarray(groups)
    splitter = inner_splitter(y, groups, classification, folds, seed)
    if splitter is None:
        raise ValueError(f"cross-validating the probe needs two subjects per class at least; {len(y)} scans given")
    classes = np.unique(y)
    predicted = np.empty(len(y), dtype=y.dtype if classification else float)
    probabilities = np.zeros((len(y), len(classes)))
    for train, test in splitter.split(x, y, groups):
        probe = fit_probe(
            x[train], y[train], classification, None if groups is None else groups[train], None, folds, seed
        )
        predicted[test] = probe.predict(x[test])
        if classification:
            probabilities[np.ix_(test, np.searchsorted(classes, probe.classes_))] = probe.predict_proba(x[test])
    if classification:
        return classification_scores(y, predicted, probabilities, classes)
    return regression_scores(y, predicted)


def classification_scores(
    y: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray, classes: np.ndarray
) -> dict[str, float]:
    """Balanced accuracy, macro one-vs-rest AUROC and average precision (``probabilities``: a column per class)."""
    return {
        "balanced_accuracy": balanced_accuracy_score(y, predicted),
        "auroc": auroc(y, probabilities, classes),
        "average_precision": auroc(y, probabilities, classes, average_precision_score),
    }


def regression_scores(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, Pearson and Spearman r (NaN when either side is constant), R^2."""
    constant = np.ptp(predicted) == 0 or np.ptp(y) == 0
    return {
        "mae": mean_absolute_error(y, predicted),
        "rmse": float(np.sqrt(np.mean((y - predicted) ** 2))),
        "pearson": float("nan") if constant else float(pearsonr(predicted, y)[0]),
        "spearman": float("nan") if constant else float(spearmanr(predicted, y)[0]),
        "r2": r2_score(y, predicted),
    }


def auroc(y_true: np.ndarray, probabilities: np.ndarray, classes: np.ndarray, score: Callable = roc_auc_score) -> float:
    """Macro one-vs-rest AUROC (or another ranking ``score``) over the test classes the model knows; NaN with fewer than two.

    Binary tasks average both classes too, as the classification head's torchmetrics do (the
    same AUROC; the average precision of both classes, not only the positive one's).
    """
    present = [i for i, c in enumerate(classes) if c in set(y_true)]
    if len(present) < 2:
        return float("nan")
    keep = np.isin(y_true, classes[present])
    return float(np.mean([score(y_true[keep] == classes[i], probabilities[keep, i]) for i in present]))
