"""HMEClassifier: Bernoulli / multinomial-logit experts behind the scikit-learn API."""

from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

import hme
from hme import model as _model

from ._base import HMEBase, check_sample_weight


class HMEClassifier(ClassifierMixin, HMEBase):
    """Hierarchical mixture of experts classification: logistic (two classes) or multinomial-logit experts.

    Parameters are those of :class:`HMERegressor` without the Gaussian options. Labels may be strings,
    integers or booleans; ``classes_`` holds them in sorted order, and class 0 of every expert is the reference.
    The default regularisation follows ``LogisticRegression()`` (C = 1) on the standardised inputs: every gate
    gets its ridge (``gate_alpha="auto"`` is 1), and the experts share it (``alpha="auto"`` is 1 / n_leaves each,
    with ``shrink_to="zero"``).

    Attributes
    ----------
    classes_, params_, gate_coef_, gate_intercept_, expert_coef_ (n_leaves, n_expert_features, n_classes - 1),
    expert_intercept_ (n_leaves, n_classes - 1), n_iter_, converged_, lower_bound_, lower_bounds_
    """

    def _auto_strength(self, spec) -> float:
        """``LogisticRegression()``'s ridge (C = 1) shared by the experts: 1 / n_leaves each, so that the prior
        of the whole mixture has LogisticRegression's total precision (one leaf: exactly its penalty)."""
        return 1.0 / spec.tree.n_leaves

    def __init__(
        self,
        depth=2,
        branching=2,
        max_leaf_nodes=None,
        grow_criterion="bic",
        validation_fraction=0.1,
        prune=True,
        gate="softmax",
        gate_features=None,
        expert_features=None,
        alpha="auto",
        shrink_to="zero",
        gate_alpha="auto",
        max_iter=500,
        tol=1e-6,
        n_init=1,
        n_candidates=20,
        init_params="random",
        gate_solver="newton",
        solver="em",
        optimizer="lbfgs",
        learning_rate=None,
        batch_size=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        out_of_bounds="clip",
        devices=1,
    ):
        self.depth = depth
        self.branching = branching
        self.max_leaf_nodes = max_leaf_nodes
        self.grow_criterion = grow_criterion
        self.validation_fraction = validation_fraction
        self.prune = prune
        self.gate = gate
        self.gate_features = gate_features
        self.expert_features = expert_features
        self.alpha = alpha
        self.shrink_to = shrink_to
        self.gate_alpha = gate_alpha
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.n_candidates = n_candidates
        self.init_params = init_params
        self.gate_solver = gate_solver
        self.solver = solver
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.out_of_bounds = out_of_bounds
        self.devices = devices

    def fit(self, X, y, sample_weight=None):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"HMEClassifier needs samples of at least 2 classes in the data, but the data contain only one "
                f"class: {self.classes_[0]!r}"
            )
        sample_weight = check_sample_weight(sample_weight, X, dtype=X.dtype)
        if not sample_weight.sum() > 0:
            raise ValueError("sample_weight must have a positive sum")
        spec = hme.ModelSpec(
            tree=self._tree(),
            n_features=self.n_features_in_,
            n_targets=len(self.classes_),
            gate=self.gate,
            expert="categorical",
            gate_features=self._resolve_features(self.gate_features, "gate_features"),
            expert_features=self._resolve_features(self.expert_features, "expert_features"),
        )
        self._check_min_samples(X.shape[0], spec)
        return self._fit_core(X, codes.astype(np.int32), sample_weight, spec)

    def _core_y(self, y):
        y = np.asarray(y)
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        if not np.all(self.classes_[idx] == y):
            raise ValueError("y contains labels not seen during fit")
        return idx.astype(np.int32)

    def predict_log_proba(self, X):
        """Log class probabilities (float64), columns in the order of ``classes_``; finite where a leaf saturates.

        The mixture ``log Σ_l π_l(x) p_l(c | x)`` is formed in log space in the fit's dtype and renormalised in
        float64, so ``exp`` of each row sums to 1 within float64 rounding."""
        X = self._check_X(X)
        with self._scope(X.dtype):
            lp = np.asarray(_model.predict_log_proba(self._spec, self._params_jax(), X, expert_box=self._expert_box()),
                            np.float64)
        return lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)

    def predict_proba(self, X):
        """Class probabilities (float64), columns in the order of ``classes_``: each in [0, 1], rows sum to 1."""
        p = np.exp(self.predict_log_proba(X))
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X):
        proba = self.predict_proba(X)  # checks that the estimator is fitted first
        return self.classes_[np.argmax(proba, axis=1)]

    @property
    def expert_coef_(self):
        check_is_fitted(self, "params_")
        return self.params_.experts.coef

    @property
    def expert_intercept_(self):
        check_is_fitted(self, "params_")
        return self.params_.experts.intercept
