"""Default classifiers are calibrated like LogisticRegression's defaults (issue 12): held-out log-loss within 25%
of ``LogisticRegression()`` on scikit-learn's bundled sets, and no ConvergenceWarning when EM has converged."""

import os
import sys
import warnings

import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from hme import HMEClassifier

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from bench_classifier import TARGET_RATIO, cv_scores, load  # noqa: E402


def test_breast_cancer_depth_1_is_as_calibrated_as_logistic_regression():
    """Issue 12: with alpha=1e-6 the gate split the training data perfectly (slopes 30-55 per SD), held-out
    log-loss was 0.57 against 0.074, and every fit raised a ConvergenceWarning. Now: within 25%, and every fold's
    fit converges without a warning."""
    X, y = load("breast_cancer")
    ours, acc, warned = cv_scores(HMEClassifier(depth=1, random_state=0), X, y)
    ref, _, _ = cv_scores(LogisticRegression(max_iter=5000), X, y)
    assert ours.mean() <= TARGET_RATIO * ref.mean(), (ours.mean(), ref.mean())
    assert warned == 0 and acc.mean() > 0.95


def test_converged_fits_raise_no_convergence_warning_and_unconverged_ones_do():
    X, y = load("iris")
    X = (X - X.mean(0)) / X.std(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = HMEClassifier(depth=1, random_state=0).fit(X, y)
    assert clf.converged_
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        short = HMEClassifier(depth=1, random_state=0, max_iter=2, tol=0.0).fit(X, y)
    assert not short.converged_


@pytest.mark.slow
@pytest.mark.parametrize("name", ["breast_cancer", "wine", "iris", "digits"])
def test_default_log_loss_within_25_percent_of_logistic_regression(name):
    X, y = load(name)
    ref, _, _ = cv_scores(LogisticRegression(max_iter=5000), X, y)
    for depth in (1, 2):
        ours, _, _ = cv_scores(HMEClassifier(depth=depth, random_state=0), X, y)
        assert ours.mean() <= TARGET_RATIO * ref.mean(), (depth, ours.mean(), ref.mean())
