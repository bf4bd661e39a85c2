"""The linear probe: the one linear model of the benchmark, the online probe and the regional-mean baseline.

One model for every kind of per-scan features (frozen encoder embeddings, regional mean CBF),
so that a difference in a table is a difference in the features: standardised features, then
class-balanced logistic regression (classification) or ridge regression (regression), whose
regularisation (C or alpha) is chosen by inner cross-validation over a fixed grid, on the
training scans only and grouped by subject. A fixed C is not a probe result: the best strength
depends on the feature width, the number of labelled scans and the signal, so a fixed one
favours whichever features happen to suit it.

The inner cross-validation is GridSearchCV's (same folds, scores, tie rule and refit), computed
without its per-fit overhead, which is most of a small probe's cost and the benchmark fits tens of
thousands: each inner fold is standardised once, ridge's whole alpha grid comes from one SVD,
and binary logistic regression is solved exactly by Newton's method in the row space of the fold's
scans (where an L2-penalised optimum lies: at most as many dimensions as scans). The refit on all
training scans at the chosen strength is scikit-learn's own.

Covariates (the global CBF scalars) are kept apart from the features: after standardisation they
are scaled up (``CovariateWeight``) so that their block has the prior variance of all features
together. Under one shared penalty two scalars beside 192 features are shrunk away: on the demo
benchmark the scalars alone separate AD from controls at AUROC 0.71, the features and scalars under
one penalty at 0.52.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import pearsonr, spearmanr
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
)
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ichor.data.datamodule import GLOBAL_CBF_NAMES

log = logging.getLogger(__name__)

# Log-spaced grids, wide enough for a few to a few thousand standardised features and tens to
# thousands of scans; ties go to the stronger regularisation (GridSearchCV keeps the first best).
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))  # logistic regression: inverse strength
ALPHA_GRID = tuple(float(a) for a in np.logspace(-1, 5, 7))  # ridge: strength
INNER_FOLDS = 5
# Without enough scans for two inner folds, sklearn's default strength is used and reported.
DEFAULT_REGULARISATION = 1.0


class CovariateWeight(TransformerMixin, BaseEstimator):
    """Scale the last ``covariates`` of D standardised columns by sqrt((D - covariates) / covariates).

    A coefficient's L2 penalty on a column scaled by w is the penalty over w^2: the covariates'
    block then has the prior variance of the features' whole block, whatever the feature width.
    """

    def __init__(self, covariates: int = 0) -> None:
        self.covariates = covariates

    def fit(self, x: np.ndarray, y: object = None) -> CovariateWeight:
        width = np.shape(x)[1]
        self.weight_ = np.sqrt(max(width - self.covariates, 1) / self.covariates) if self.covariates else 1.0
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if not self.covariates:
            return x
        x = np.array(x, dtype=float)
        x[:, -self.covariates :] *= self.weight_
        return x


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
    covariates: int = 0,
) -> LinearProbe:
    """Fit the linear probe on training scans ``x`` (N, D), ``y`` (N,), choosing C or alpha by inner CV.

    ``groups`` (N,), usually the subject, keeps all scans of a group in one inner fold. The
    inner score is the log loss (classification, a proper score that any number of classes
    shares) or the squared error (regression, what ridge minimises). The last ``covariates``
    columns of ``x`` are kept apart from the features (``CovariateWeight``).
    """
    grid = list(grid or (C_GRID if classification else ALPHA_GRID))
    name = "logisticregression__C" if classification else "ridge__alpha"
    model = _pipeline(classification, seed, covariates)
    splitter = inner_splitter(y, groups, classification, folds, seed)
    if splitter is None:
        log.warning("linear probe: too few scans or subjects for inner cross-validation; strength fixed at 1")
        model.set_params(**{name: DEFAULT_REGULARISATION}).fit(x, y)
        return LinearProbe(model, DEFAULT_REGULARISATION, 0, classification)
    best = first_best(inner_scores(x, y, groups, splitter, model, grid).mean(axis=0))
    model.set_params(**{name: grid[best]}).fit(x, y)
    return LinearProbe(model, float(grid[best]), splitter.get_n_splits(), classification)


def inner_scores(
    x: np.ndarray,
    y: np.ndarray,
    groups: Sequence | np.ndarray | None,
    splitter: StratifiedGroupKFold | StratifiedKFold | GroupKFold | KFold,
    model: Pipeline,
    grid: Sequence[float],
) -> np.ndarray:
    """(folds, grid) inner scores of ``model`` (``_pipeline``'s) at every grid value: GridSearchCV's ``split<i>_test_score``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y)
    split = splitter.split(x, y, None if groups is None else np.asarray(groups))
    return np.array([_fold_scores(x, y, train, test, model, list(grid)) for train, test in split])


def first_best(means: np.ndarray) -> int:
    """GridSearchCV's choice among mean inner scores: the highest, the first on ties, NaN as the worst (0 if all are)."""
    return int(np.argmax(np.where(np.isnan(means), -np.inf, means)))


def _fold_scores(
    x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, model: Pipeline, grid: list[float]
) -> np.ndarray:
    """One inner fold's score at every grid value: GridSearchCV's neg log loss or neg mean squared error."""
    scaler, estimator = clone(model[:-1]).fit(x[train]), model[-1]
    x_train, x_test = scaler.transform(x[train]), scaler.transform(x[test])
    if isinstance(estimator, Ridge):
        predicted = ridge_path(x_train, y[train], x_test, grid)
        return -np.mean((y[test][:, None] - predicted) ** 2, axis=0)
    classes = np.unique(y[train])
    if len(classes) == 2:
        positive = logistic_path(x_train, y[train] == classes[1], x_test, grid)
        probabilities = np.stack([1 - positive, positive], axis=-1)
    else:  # several classes: scikit-learn's multinomial fit, value by value
        probabilities = np.stack(
            [clone(estimator).set_params(C=c).fit(x_train, y[train]).predict_proba(x_test) for c in grid], axis=1
        )
    return np.array([log_likelihood(y[test], probabilities[:, i], classes) for i in range(len(grid))])


def log_likelihood(y: np.ndarray, probabilities: np.ndarray, classes: np.ndarray) -> float:
    """Minus the log loss (probabilities clipped as scikit-learn does); NaN unless ``y`` holds every class,
    as the neg_log_loss scorer, which passes no labels, fails then."""
    if not np.array_equal(np.unique(y), classes):
        return float("nan")
    eps = np.finfo(probabilities.dtype).eps
    chosen = probabilities[np.arange(len(y)), np.searchsorted(classes, y)]
    return float(np.mean(np.log(np.clip(chosen, eps, 1 - eps))))


def ridge_path(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """(N_test, alphas) predictions of ridge regression with an intercept, for every alpha from one SVD."""
    offset, mean = x.mean(axis=0), y.mean()
    u, s, vt = np.linalg.svd(x - offset, full_matrices=False)
    shrink = s[:, None] / (s[:, None] ** 2 + np.asarray(alphas)[None, :])  # (rank, alphas)
    coefs = vt.T @ (shrink * (u.T @ (y - mean))[:, None])  # (D, alphas)
    return (x_test - offset) @ coefs + mean


def logistic_path(x: np.ndarray, positive: np.ndarray, x_test: np.ndarray, cs: Sequence[float]) -> np.ndarray:
    """(N_test, cs) P(positive) of class-balanced L2 logistic regression with an unpenalised intercept, per C.

    scikit-learn's objective, sum_i w_i logloss_i + |coef|^2 / (2C) with balanced weights w, minimised
    exactly: the optimal coef lies in the span of the training scans, so the problem is solved in
    the coordinates of their SVD (rank <= N) by Newton's method, each C starting from the previous solution.
    """
    positive = positive.astype(float)
    counts = np.array([np.sum(positive == 0), np.sum(positive == 1)])
    weights = len(positive) / (2 * counts[positive.astype(int)])
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    keep = s > s[0] * max(x.shape) * np.finfo(float).eps
    design = np.hstack([u[:, keep] * s[keep], np.ones((len(x), 1))])
    theta = np.zeros(design.shape[1])
    predicted = np.empty((len(x_test), len(cs)))
    for i, c in enumerate(cs):
        penalty = np.full(design.shape[1], 1 / c)
        penalty[-1] = 0.0  # the intercept is not penalised
        theta = _newton(design, positive, weights, penalty, theta)
        predicted[:, i] = expit(x_test @ (vt[keep].T @ theta[:-1]) + theta[-1])
    return predicted


def _newton(
    design: np.ndarray, y: np.ndarray, weights: np.ndarray, penalty: np.ndarray, theta: np.ndarray, max_iter: int = 100
) -> np.ndarray:
    """Minimise sum_i w_i logloss_i + sum_j penalty_j theta_j^2 / 2 by Newton steps with backtracking."""

    def objective(t: np.ndarray) -> float:
        z = design @ t
        return float(weights @ (np.logaddexp(0, z) - y * z) + 0.5 * penalty @ t**2)

    value = objective(theta)
    for _ in range(max_iter):
        p = expit(design @ theta)
        gradient = design.T @ (weights * (p - y)) + penalty * theta
        if np.max(np.abs(gradient)) <= 1e-10 * len(y):
            break
        hessian = (design.T * (weights * p * (1 - p))) @ design + np.diag(penalty)
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:  # saturated probabilities leave the intercept's curvature at 0
            step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        decrease, size = gradient @ step, 1.0
        while (new := objective(theta - size * step)) > value - 1e-4 * size * decrease and size > 1e-12:
            size /= 2
        if new >= value:  # no further decrease at machine precision
            break
        theta, value = theta - size * step, new
    return theta


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


def _pipeline(classification: bool, seed: int, covariates: int = 0) -> Pipeline:
    estimator: BaseEstimator = (
        LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed) if classification else Ridge()
    )
    if covariates:
        return make_pipeline(StandardScaler(), CovariateWeight(covariates), estimator)
    return make_pipeline(StandardScaler(), estimator)


def fit_and_score(
    features: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, target: str, classification: bool, seed: int = 0
) -> dict[str, float]:
    """Fit on ``train`` rows (inner CV grouped by their subject), return ``test/<metric>`` values on ``test`` rows.

    The global CBF scalars among ``features``' columns are the probe's covariates (kept apart).
    Also returns ``probe/regularisation`` (the chosen C or alpha) and ``probe/inner_folds``:
    outside ``test/``, so the benchmark's summaries leave them out.
    """
    scalars = [column for column in features.columns if column in GLOBAL_CBF_NAMES]
    features = features[[column for column in features.columns if column not in scalars] + scalars]
    x_train, x_test = features.loc[train["path"]].to_numpy(), features.loc[test["path"]].to_numpy()
    groups = train["subject"].to_numpy() if "subject" in train.columns else None
    cast = str if classification else float
    y_train, y_test = train[target].astype(cast).to_numpy(), test[target].astype(cast).to_numpy()
    probe = fit_probe(x_train, y_train, classification, groups, seed=seed, covariates=len(scalars))
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
    covariates: int = 0,
) -> dict[str, float]:
    """Scores of the probe on data without a test set: nested cross-validation, outer folds as the inner ones.

    Each outer fold's probe is fitted (with its own inner CV) on the other folds; the scores are
    those of the pooled out-of-fold predictions, steadier than a mean over small folds. The last
    ``covariates`` columns of ``x`` are kept apart (``fit_probe``).
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
            x[train], y[train], classification, None if groups is None else groups[train], None, folds, seed, covariates
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
