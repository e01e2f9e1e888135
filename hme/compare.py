r"""Comparing fitted models on held-out data: repeated random splits, predictive scores and paired intervals.

The protocol of ``benchmarks/deep_vs_flat.py`` (issue 15), usable for any two scikit-learn estimators:

* :func:`repeated_splits` draws J random train/test splits; inputs are standardised on each training part.
* :func:`regression_scores` / :func:`classification_scores` fit one model on one split and score its held-out
  predictions: squared error (or accuracy), the mean predictive log-density ``(1/m) Σ_t log p(y_t | x_t)`` and, for
  regression, the share of test targets inside the central 90% predictive interval. A model with its own
  predictive distribution (``log_likelihood`` and ``predict_interval``, as :class:`hme.HMERegressor` has) is scored
  by it; a point predictor gets the Gaussian plug-in ``N(ŷ(x), σ̂²)`` with ``σ̂²`` the mean squared *out-of-fold*
  residual of 5-fold cross-validation on the training part (training residuals would flatter a tree that
  interpolates its training rows).
* :func:`paired_interval` summarises per-split differences ``d_j = s_j(A) - s_j(B)`` with a confidence interval.
  Random splits overlap, so the d_j are correlated and the naive t interval is too narrow; the corrected
  resampled t interval of Nadeau & Bengio (2003, "Inference for the generalization error") inflates the variance:

  .. math::  \bar d \pm t_{J-1, 1-α/2} \sqrt{(1/J + m/n) s_d^2}

  with m and n the test and training sizes and s_d² the sample variance of the d_j.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator

import numpy as np
from scipy import stats

#: clip predicted class probabilities away from 0 before taking logs (scikit-learn's log_loss does the same)
PROBA_FLOOR = 1e-15


def repeated_splits(n_samples: int, n_repeats: int, test_size: float = 0.25,
                    random_state: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) of ``n_repeats`` random splits, split j seeded by ``random_state + j``."""
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must lie strictly between 0 and 1, got {test_size!r}")
    n_test = int(round(test_size * n_samples))
    if n_test < 1 or n_samples - n_test < 2:
        raise ValueError(f"n_samples={n_samples} is too small for test_size={test_size}")
    for j in range(n_repeats):
        perm = np.random.default_rng(random_state + j).permutation(n_samples)
        yield np.sort(perm[n_test:]), np.sort(perm[:n_test])


def standardise(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale both parts by the training part's mean and standard deviation (constant columns: 1)."""
    mu = X_train.mean(axis=0)
    sd = X_train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return (X_train - mu) / sd, (X_test - mu) / sd


def _fit(model, X, y) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        model.fit(X, y)
        return time.perf_counter() - t


def out_of_fold_variance(model, X: np.ndarray, y: np.ndarray, folds: int = 5, random_state: int = 0) -> float:
    """σ̂² = mean squared residual of ``folds``-fold cross-validated predictions of a clone of ``model``."""
    from sklearn.base import clone
    from sklearn.model_selection import KFold

    resid = np.empty_like(y, dtype=np.float64)
    for tr, te in KFold(folds, shuffle=True, random_state=random_state).split(X):
        m = clone(model)
        _fit(m, X[tr], y[tr])
        resid[te] = y[te] - m.predict(X[te])
    return float(np.mean(resid**2))


def regression_scores(model, X_train, y_train, X_test, y_test, coverage: float = 0.9) -> dict:
    """Fit ``model`` and score it on the test rows: ``mse``, ``log_lik`` (mean log p(y|x) per test row),
    ``coverage`` (share inside the central ``coverage`` predictive interval) and ``seconds`` (the fit alone)."""
    seconds = _fit(model, X_train, y_train)
    pred = np.asarray(model.predict(X_test), np.float64)
    y_test = np.asarray(y_test, np.float64)
    if hasattr(model, "log_likelihood") and hasattr(model, "predict_interval"):
        log_lik = np.asarray(model.log_likelihood(X_test, y_test), np.float64)
        lo, hi = model.predict_interval(X_test, coverage)
    else:
        sd = np.sqrt(out_of_fold_variance(model, X_train, np.asarray(y_train, np.float64)))
        log_lik = stats.norm.logpdf(y_test, pred, sd)
        z = stats.norm.ppf(0.5 + coverage / 2)
        lo, hi = pred - z * sd, pred + z * sd
    inside = (y_test >= np.asarray(lo)) & (y_test <= np.asarray(hi))
    return {"mse": float(np.mean((pred - y_test) ** 2)), "log_lik": float(np.mean(log_lik)),
            "coverage": float(np.mean(inside)), "seconds": seconds}


def classification_scores(model, X_train, y_train, X_test, y_test) -> dict:
    """Fit ``model`` and score it on the test rows: ``accuracy``, ``log_lik`` (mean log p(y|x), probabilities
    clipped at :data:`PROBA_FLOOR`) and ``seconds`` (the fit alone)."""
    seconds = _fit(model, X_train, y_train)
    proba = np.asarray(model.predict_proba(X_test), np.float64)
    col = np.searchsorted(model.classes_, y_test)
    known = (col < len(model.classes_)) & (model.classes_[np.minimum(col, len(model.classes_) - 1)] == y_test)
    p = np.where(known, proba[np.arange(len(y_test)), np.minimum(col, proba.shape[1] - 1)], 0.0)
    pred = model.classes_[np.argmax(proba, axis=1)]
    return {"accuracy": float(np.mean(pred == y_test)), "log_lik": float(np.mean(np.log(np.maximum(p, PROBA_FLOOR)))),
            "seconds": seconds}


def paired_interval(diffs, n_train: int, n_test: int, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper) of the corrected resampled t interval (Nadeau & Bengio 2003) for the mean of paired
    per-split differences; one split gives an infinite interval."""
    d = np.asarray(diffs, np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(d.mean())
    if d.size < 2:
        return mean, -np.inf, np.inf
    half = stats.t.ppf(0.5 + level / 2, d.size - 1) * np.sqrt((1 / d.size + n_test / n_train) * d.var(ddof=1))
    return mean, mean - float(half), mean + float(half)
