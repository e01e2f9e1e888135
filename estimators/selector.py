"""HMESelector: choose the tree (depth, branching) and gate family by BIC, ICL or cross-validated log-likelihood."""

from __future__ import annotations

import itertools
import time
import warnings

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from ._base import DegenerateFitWarning
from .regressor import HMERegressor


class HMESelector(MetaEstimatorMixin, BaseEstimator):
    """Fit every combination of ``depth`` x ``branching`` x ``gate`` and keep the best by ``criterion``.

    Parameters
    ----------
    estimator : HMERegressor or HMEClassifier, default=HMERegressor()
        Template; its other parameters are kept.
    depth, branching, gate : sequences of candidate values
        ``None`` among the depths adds a grown tree (``depth=None``: growth and pruning by the template's
        ``grow_criterion``, up to its ``max_leaf_nodes``) as a candidate for each gate; branching does not apply.
    criterion : {"bic", "icl", "cv"}, default="bic"
        BIC and ICL (lower is better) on the training data; "cv": mean held-out log-likelihood per sample over
        ``cv`` folds (higher is better).
    cv : int, default=5
    n_init : int, default=3
        Restarts of every candidate fit.
    random_state : int or None

    Attributes
    ----------
    results_ : dict of arrays, one entry per candidate (params, n_leaves, n_parameters, log_likelihood, bic, icl,
        cv_log_likelihood, converged, n_iter, degenerate (why the returned fit degenerated, '' if healthy),
        fit_time), as ``GridSearchCV.cv_results_``
    best_index_, best_params_, best_estimator_ (fitted on all data): the best healthy candidate; a degenerate one
        only when every candidate degenerated, with a ``DegenerateFitWarning``
    """

    def __init__(
        self,
        estimator=None,
        depth=(1, 2, 3),
        branching=(2,),
        gate=("softmax",),
        criterion="bic",
        cv=5,
        n_init=3,
        random_state=None,
    ):
        self.estimator = estimator
        self.depth = depth
        self.branching = branching
        self.gate = gate
        self.criterion = criterion
        self.cv = cv
        self.n_init = n_init
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None):
        if self.criterion not in ("bic", "icl", "cv"):
            raise ValueError(f"criterion must be 'bic', 'icl' or 'cv', got {self.criterion!r}")
        base = HMERegressor() if self.estimator is None else self.estimator
        # depth=None grows the tree (branching does not apply to it): one growth candidate per gate
        grid = list(dict.fromkeys((d, 2 if d is None else b, g)
                                  for d, b, g in itertools.product(self.depth, self.branching, self.gate)))
        if not grid:
            raise ValueError("the candidate grid is empty")
        X = np.asarray(X) if not hasattr(X, "iloc") else X
        y = np.asarray(y)
        rows = {
            k: []
            for k in (
                "params",
                "n_leaves",
                "n_parameters",
                "log_likelihood",
                "bic",
                "icl",
                "cv_log_likelihood",
                "converged",
                "n_iter",
                "degenerate",
                "fit_time",
            )
        }
        fitted = []
        for depth, branching, gate in grid:
            if depth is None and gate == "gaussian":
                raise ValueError("a Gaussian gate defines a single gate and cannot grow: drop None from depth or "
                                 "'gaussian' from gate")
            params = dict(
                depth=depth, branching=branching, gate=gate, n_init=self.n_init, random_state=self.random_state
            )
            est = clone(base).set_params(**params)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # recorded in the table instead
                warnings.simplefilter("ignore", DegenerateFitWarning)
                est.fit(X, y, sample_weight=sample_weight)
            rows["fit_time"].append(time.perf_counter() - t0)
            rows["params"].append(params)
            rows["n_leaves"].append(est.n_leaves_)
            rows["n_parameters"].append(est._n_parameters(est._spec))
            rows["log_likelihood"].append(float(est.log_likelihood(X, y).sum()))
            rows["bic"].append(est.bic(X, y))
            rows["icl"].append(est.icl(X, y))
            rows["converged"].append(est.converged_)
            rows["n_iter"].append(est.n_iter_)
            rows["degenerate"].append(est.restart_degenerate_[est.best_restart_])
            rows["cv_log_likelihood"].append(self._cv_score(base, params, X, y) if self.criterion == "cv" else np.nan)
            fitted.append(est)
        self.results_ = {k: np.asarray(v) if k != "params" else v for k, v in rows.items()}
        healthy = self.results_["degenerate"] == ""
        if self.criterion == "cv":
            score = -self.results_["cv_log_likelihood"]
        else:
            score = self.results_[self.criterion].astype(float)
        score = np.where(np.isfinite(score), score, np.inf)
        # a degenerate fit (an empty leaf, an expert on the variance floor) has an inflated likelihood: it is
        # chosen only when every candidate degenerated, and then with a warning
        self.best_index_ = int(np.argmin(np.where(healthy, score, np.inf)) if healthy.any() else np.argmin(score))
        if not healthy.any():
            warnings.warn(
                f"every candidate fit is degenerate; returning the best by {self.criterion} "
                f"({self.results_['params'][self.best_index_]}): {self.results_['degenerate'][self.best_index_]}. "
                "Try smaller trees, a larger var_floor or alpha, or more restarts (n_init).",
                DegenerateFitWarning,
                stacklevel=2,
            )
        self.best_params_ = self.results_["params"][self.best_index_]
        self.best_estimator_ = fitted[self.best_index_]
        return self

    def _cv_score(self, base, params, X, y):
        is_clf = hasattr(base, "predict_proba")
        splitter = (StratifiedKFold if is_clf else KFold)(self.cv, shuffle=True, random_state=0)
        scores = []
        take = lambda A, idx: A.iloc[idx] if hasattr(A, "iloc") else A[idx]
        for tr, te in splitter.split(np.zeros(len(y)), y if is_clf else None):
            est = clone(base).set_params(**params)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                warnings.simplefilter("ignore", DegenerateFitWarning)
                est.fit(take(X, tr), y[tr])
            scores.append(float(est.log_likelihood(take(X, te), y[te]).mean()))
        return float(np.mean(scores))

    def predict(self, X):
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(X)

    def score(self, X, y, sample_weight=None):
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.score(X, y, sample_weight=sample_weight)

    def table(self):
        """The results as printable text, one line per candidate, best marked with '*'."""
        check_is_fitted(self, "results_")
        r = self.results_
        lines = [
            f"{'':1s} {'depth':>5s} {'branch':>6s} {'gate':>8s} {'leaves':>6s} {'k':>5s} {'loglik':>12s} "
            f"{'BIC':>12s} {'ICL':>12s} {'cv ll/n':>9s} {'conv':>5s} {'degen':>5s}"
        ]
        for i, p in enumerate(r["params"]):
            mark = "*" if i == self.best_index_ else ""
            depth, branching = ("grow", "-") if p["depth"] is None else (str(p["depth"]), str(p["branching"]))
            lines.append(
                f"{mark:1s} {depth:>5s} {branching:>6s} {p['gate']:>8s} "
                f"{r['n_leaves'][i]:6d} {r['n_parameters'][i]:5d} "
                f"{r['log_likelihood'][i]:12.3f} {r['bic'][i]:12.3f} {r['icl'][i]:12.3f} "
                f"{r['cv_log_likelihood'][i]:9.4f} {str(bool(r['converged'][i])):>5s} "
                f"{'yes' if r['degenerate'][i] else '':>5s}"
            )
        return "\n".join(lines)
