"""The linear probe's inner cross-validation is GridSearchCV's, computed without its per-fit overhead."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV

from ichor.data.datamodule import GLOBAL_CBF_NAMES
from ichor.evaluation.linear import (
    ALPHA_GRID,
    C_GRID,
    _pipeline,
    auroc,
    first_best,
    fit_and_score,
    fit_probe,
    inner_scores,
    inner_splitter,
    logistic_path,
    ridge_path,
)


def probe_problem(classification: bool, features: int, per_class: int, seed: int, classes: int = 2):
    """Scans of two scans per subject (grouped folds), a signal in the first features, as a probe sees them."""
    rng = np.random.default_rng(seed)
    n = classes * per_class
    x = rng.standard_normal((n, features))
    signal = x[:, : min(3, features)].sum(axis=1) + rng.standard_normal(n)
    if classification:
        y = np.array(
            [f"class{k}" for k in np.digitize(signal, np.quantile(signal, np.linspace(0, 1, classes + 1)[1:-1]))]
        )
    else:
        y = signal
    return x, y, np.repeat(np.arange(n // 2), 2)


def grid_search(x, y, classification, groups, seed, exact=False, covariates=0):
    """The exhaustive reference: GridSearchCV over the probe's own pipeline, folds and score.

    ``exact``: logistic regression solved to a gradient of 1e-10 (scikit-learn's lbfgs stops at 1e-4).
    """
    name, grid = ("logisticregression__C", C_GRID) if classification else ("ridge__alpha", ALPHA_GRID)
    pipeline = _pipeline(classification, seed, covariates)
    if exact and classification:
        pipeline.set_params(logisticregression__tol=1e-10, logisticregression__max_iter=100_000)
    search = GridSearchCV(
        pipeline,
        {name: list(grid)},
        scoring="neg_log_loss" if classification else "neg_mean_squared_error",
        cv=inner_splitter(y, groups, classification, 5, seed),
    )
    return search.fit(x, y, groups=groups), name


@pytest.mark.parametrize(
    ("classification", "features", "per_class", "classes"),
    [(True, 4, 20, 2), (True, 40, 12, 2), (True, 6, 16, 3), (False, 4, 20, 2), (False, 120, 10, 2)],
)
@pytest.mark.parametrize(("seed", "covariates"), [(0, 0), (1, 0), (0, 2)])
def test_inner_cross_validation_chooses_what_grid_search_chooses(
    classification, features, per_class, classes, seed, covariates
):
    """Same folds, the exact scores at every grid value, the choice and the refitted model of GridSearchCV
    (also with covariates kept apart: the inner folds weight them as the refit does)."""
    x, y, groups = probe_problem(classification, features, per_class, seed, classes)
    grid = C_GRID if classification else ALPHA_GRID
    splitter = inner_splitter(y, groups, classification, 5, seed)
    scores = inner_scores(x, y, groups, splitter, _pipeline(classification, seed, covariates), grid)
    # binary and ridge: exact paths; several classes: scikit-learn's own fits, value by value
    exact, _ = grid_search(x, y, classification, groups, seed, exact=classes == 2, covariates=covariates)
    reference = np.array([exact.cv_results_[f"split{i}_test_score"] for i in range(len(scores))])
    tolerance = 1e-5 if covariates else 1e-6  # up-weighted columns: a less well conditioned optimum
    np.testing.assert_allclose(scores, reference, rtol=tolerance, atol=tolerance)
    search, name = grid_search(x, y, classification, groups, seed, covariates=covariates)
    probe = fit_probe(x, y, classification, groups, seed=seed, covariates=covariates)
    assert probe.regularisation == search.best_params_[name]
    predicted = probe.predict_proba(x) if classification else probe.predict(x)
    expected = search.best_estimator_.predict_proba(x) if classification else search.best_estimator_.predict(x)
    np.testing.assert_array_equal(predicted, expected)  # the refit is scikit-learn's own


def test_logistic_path_is_scikit_learns_balanced_l2_logistic_regression_with_more_features_than_scans():
    """Solved in the row space of the scans, the path is the full-width model's optimum at every C."""
    x, y, _ = probe_problem(True, 50, 12, seed=3)
    y[:4] = "class0"  # unbalanced classes: the balanced weights matter
    x_test = np.random.default_rng(4).standard_normal((7, 50))
    positive = logistic_path(x, y == "class1", x_test, C_GRID)
    for i, c in enumerate(C_GRID):
        exact = LogisticRegression(C=c, class_weight="balanced", tol=1e-12, max_iter=100_000).fit(x, y)
        np.testing.assert_allclose(positive[:, i], exact.predict_proba(x_test)[:, 1], atol=1e-5)


def test_ridge_path_is_scikit_learns_ridge_at_every_alpha():
    x, y, _ = probe_problem(False, 30, 10, seed=5)
    x_test = np.random.default_rng(6).standard_normal((5, 30))
    predicted = ridge_path(x, y, x_test, ALPHA_GRID)
    for i, alpha in enumerate(ALPHA_GRID):
        np.testing.assert_allclose(predicted[:, i], Ridge(alpha=alpha).fit(x, y).predict(x_test), atol=1e-8)


def test_ties_go_to_the_first_grid_value_and_failed_scores_rank_last():
    assert first_best(np.array([0.5, 1.0, 1.0])) == 1
    assert first_best(np.array([np.nan, -2.0, -1.0])) == 2
    assert first_best(np.array([np.nan, np.nan])) == 0  # GridSearchCV ranks all first when every fit failed


def scalar_beside_noise(n: int, seed: int, width: int = 190):
    """Scans whose label lives in one global-CBF scalar, beside ``width`` uninformative features."""
    rng = np.random.default_rng(seed)
    y = np.repeat(["CN", "SVD"], n // 2)
    scalars = rng.standard_normal((n, 2))
    scalars[:, 0] -= 1.0 * (y == "SVD")  # a lower global CBF in disease
    return np.hstack([rng.standard_normal((n, width)), scalars]), y


def test_global_cbf_scalars_kept_apart_survive_many_uninformative_features():
    """Under one penalty, 2 informative scalars beside 190 noise features are shrunk with them (what
    the demo benchmark measured: AD AUROC 0.71 on the scalars alone, 0.52 beside 192 features)."""
    together, apart = [], []
    for seed in range(6):
        x, y = scalar_beside_noise(20, seed)  # 10 labelled subjects per class
        x_test, y_test = scalar_beside_noise(200, seed + 100)
        for covariates, scores in ((0, together), (2, apart)):
            probe = fit_probe(x, y, True, seed=seed, covariates=covariates)
            scores.append(auroc(y_test, probe.predict_proba(x_test), probe.classes_))
    assert np.mean(apart) > np.mean(together) + 0.1, (np.mean(apart), np.mean(together))
    assert np.mean(apart) > 0.7


def test_fit_and_score_keeps_the_global_cbf_columns_apart_wherever_they_stand():
    x, y = scalar_beside_noise(60, seed=0, width=30)
    columns = [f"f{i:03d}" for i in range(30)] + list(GLOBAL_CBF_NAMES)
    paths = [f"scan{i}.nii.gz" for i in range(60)]
    rows = pd.DataFrame({"path": paths, "subject": paths, "diagnosis": y})
    features = pd.DataFrame(x, index=paths, columns=columns)
    train, test = rows.iloc[::2], rows.iloc[1::2]
    scores = fit_and_score(features, train, test, "diagnosis", True)
    reordered = fit_and_score(features[columns[::-1]], train, test, "diagnosis", True)
    assert scores == reordered
    together = fit_and_score(
        features.set_axis([f"f{i:03d}" for i in range(32)], axis=1), train, test, "diagnosis", True
    )
    assert scores["test/auroc"] != together["test/auroc"]
