"""Shared machinery of the scikit-learn estimators: validation, the call into the core, fitted attributes.

Thin by rule: validate, build the static spec, call :func:`hme.fit_em`, store NumPy arrays, warn.
"""

from __future__ import annotations

import contextlib
import numbers
import warnings

import jax
import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

import hme
from hme import model as _model
from hme.inference import canonicalize, standard_errors
from hme.params import ExpertParams, GateParams, HMEParams


class DegenerateFitWarning(UserWarning):
    """The returned fit has an empty leaf or a Gaussian expert whose variance sits on ``var_floor``."""


def _degeneracy(counts, collapsed):
    """Human-readable reasons a restart degenerated ('' when healthy); leaves in the restart's own order."""
    reasons = []
    empty = np.flatnonzero(counts < 1.0)
    if empty.size:
        reasons.append(f"empty leaves {empty.tolist()} (posterior count < 1 sample)")
    flat = np.flatnonzero(collapsed)
    if flat.size:
        reasons.append(f"leaves {flat.tolist()} with expert variance collapsed onto var_floor")
    return "; ".join(reasons)


def _precision(dtype):
    """Run the core in the input's precision without flipping the global x64 flag."""
    if np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


class _HMEBase(BaseEstimator):
    _parameter_constraints: dict = {
        "depth": [Interval(numbers.Integral, 1, None, closed="left")],
        "branching": [Interval(numbers.Integral, 2, None, closed="left"), tuple, list],
        "gate": [StrOptions({"softmax", "laplace"})],
        "gate_features": [None, list, tuple, np.ndarray],
        "expert_features": [None, list, tuple, np.ndarray],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "gate_alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_candidates": [Interval(numbers.Integral, 1, None, closed="left")],
        "init_params": [StrOptions({"kmeans", "kmeans_xy", "random"})],
        "gate_solver": [StrOptions({"newton", "bound"})],
        "solver": [StrOptions({"em", "gradient"})],
        "optimizer": [StrOptions({"lbfgs", "adam"})],
        "learning_rate": [None, Interval(numbers.Real, 0, None, closed="neither")],
        "batch_size": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(numbers.Integral, 1, None, closed="left")],
    }

    # -- helpers ----------------------------------------------------------------------------------------
    def _tree(self):
        b = self.branching
        if isinstance(b, (list, tuple)) and len(b) != self.depth:
            raise ValueError(f"branching has {len(b)} levels but depth is {self.depth}")
        return hme.TreeSpec.complete(self.depth, b)

    def _resolve_features(self, feats, name):
        if feats is None:
            return None
        feats = list(feats)
        out = []
        for f in feats:
            if isinstance(f, str):
                names = getattr(self, "feature_names_in_", None)
                if names is None or f not in list(names):
                    raise ValueError(f"{name}: unknown feature name {f!r}")
                out.append(int(list(names).index(f)))
            elif isinstance(f, numbers.Integral) and not isinstance(f, bool):
                if not 0 <= f < self.n_features_in_:
                    raise ValueError(f"{name}: index {f} out of range for {self.n_features_in_} features")
                out.append(int(f))
            else:
                raise TypeError(f"{name} must hold column indices or names, got {f!r}")
        return tuple(out)

    def _n_parameters(self, spec):
        t = spec.tree
        nc = t.n_children
        if spec.gate == "softmax":
            k_gate = int(np.sum((nc - 1) * (spec.n_gate_features + 1)))
        else:
            k_gate = int(np.sum(nc * spec.n_gate_features + (nc - 1)))
        k = spec.n_expert_outputs
        k_exp = t.n_leaves * (spec.n_expert_features + 1) * k
        if spec.expert == "gaussian":
            m = spec.n_targets
            per = {"full": m * (m + 1) // 2, "diag": m, "spherical": 1}[spec.covariance_type]
            k_exp += per * (1 if spec.shared_covariance else t.n_leaves)
        return k_gate + k_exp

    def _check_min_samples(self, n, spec):
        k = self._n_parameters(spec)
        if n < 2:
            raise ValueError(f"n_samples={n}: at least 2 samples are required to fit an HME")
        if n < spec.tree.n_leaves:
            raise ValueError(
                f"n_samples={n} should be >= n_leaves={spec.tree.n_leaves} (depth={spec.tree.depth}): every expert "
                "needs data. Use a smaller tree or more samples."
            )
        return k

    def _fit_core(self, X, Y, sample_weight, spec, var_floor=None):
        rs = check_random_state(self.random_state)
        seed = int(rs.randint(np.iinfo(np.int32).max))
        init = None
        if self.warm_start and hasattr(self, "params_") and getattr(self, "_spec", None) == spec:
            init = self._params_jax()
        common = dict(
            sample_weight=sample_weight, init=self.init_params, init_params=init,
            n_init=1 if init is not None else self.n_init, n_candidates=self.n_candidates, random_state=seed, max_iter=self.max_iter,
            tol=self.tol, alpha=self.alpha, gate_alpha=self.gate_alpha, var_floor=var_floor,
            verbose=int(bool(self.verbose)),
        )
        with _precision(X.dtype):
            if self.solver == "gradient":
                res = hme.fit_gradient(spec, X, Y, optimizer=self.optimizer, learning_rate=self.learning_rate,
                                       batch_size=self.batch_size, **common)
            else:
                if self.batch_size is not None:
                    raise ValueError("batch_size applies to solver='gradient' with optimizer='adam'")
                res = hme.fit_em(spec, X, Y, gate_solver=self.gate_solver, **common)
            res = jax.device_get(res)
        self._spec = spec
        # a canonical leaf order (siblings sorted by their experts' mean prediction at the weighted mean input):
        # the same optimum always gives the same parameter table
        x_ref = np.average(np.asarray(X, np.float64), axis=0, weights=np.asarray(sample_weight, np.float64))
        with _precision(X.dtype):
            canon = canonicalize(spec, res.params, x_ref)
        self.params_ = jax.tree_util.tree_map(np.asarray, canon)
        self.n_iter_ = int(res.n_iter)
        self.converged_ = bool(res.converged)
        hist = np.asarray(res.history)
        self.lower_bounds_ = hist[np.isfinite(hist)]
        self.lower_bound_ = float(res.objective)
        self.log_likelihood_ = float(res.log_likelihood)
        rh = np.asarray(res.restart_history)
        self.restart_lower_bounds_ = [h[np.isfinite(h)] for h in rh]
        self.restart_converged_ = np.asarray(res.restart_converged)
        self.restart_failed_ = np.asarray(res.restart_failed)
        self.best_restart_ = int(res.best_restart)
        self.restart_leaf_counts_ = np.asarray(res.restart_leaf_count, np.float64)
        self.restart_collapsed_ = np.asarray(res.restart_collapsed, bool)
        self.restart_degenerate_ = [
            _degeneracy(c, k) for c, k in zip(self.restart_leaf_counts_, self.restart_collapsed_)
        ]
        if self.verbose:
            for i, h in enumerate(self.restart_lower_bounds_):
                for k in range(0, len(h), self.verbose_interval):
                    print(f"restart {i} iteration {k}: objective {h[k]:.6f}")
                print(f"restart {i}: {len(h) - 1} iterations, final objective {h[-1]:.6f}")
                if self.restart_degenerate_[i]:
                    print(f"restart {i} degenerated: {self.restart_degenerate_[i]}")
        if self.restart_failed_.any():
            bad = np.flatnonzero(self.restart_failed_).tolist()
            warnings.warn(
                f"restarts {bad} produced a non-finite log-likelihood and were stopped at their last finite "
                "parameters; consider a larger var_floor or alpha",
                RuntimeWarning,
            )
        why = self.restart_degenerate_[self.best_restart_]
        if why:
            warnings.warn(
                f"the returned fit (restart {self.best_restart_} of {len(self.restart_degenerate_)}) is degenerate: "
                f"{why}. The model has more leaves than the data support or an expert interpolates a few points; "
                "try a smaller tree, a larger var_floor or alpha, or more restarts (n_init).",
                DegenerateFitWarning,
            )
        if not self.converged_:
            warnings.warn(
                f"{'EM' if self.solver == 'em' else self.optimizer} did not converge: the best of {self.n_init} restart(s) (restart {self.best_restart_}) stopped "
                f"after max_iter={self.max_iter} iterations with relative change above tol={self.tol}. "
                "Try a larger max_iter or tol, more restarts (n_init)"
                + (", gate_solver='newton'" if self.gate_solver != "newton" else "")
                + ", or more regularisation (alpha, gate_alpha) if experts or gates separate the data perfectly.",
                ConvergenceWarning,
            )
        return self

    def _params_jax(self):
        return jax.tree_util.tree_map(lambda a: None if a is None else jax.numpy.asarray(a), self.params_)

    def _check_X(self, X):
        check_is_fitted(self, "params_")
        return validate_data(self, X, reset=False, dtype=[np.float64, np.float32])

    # -- shared public methods ----------------------------------------------------------------------------
    def predict_leaf_proba(self, X):
        """Gate path probabilities π_l(x) of every leaf, shape (n_samples, n_leaves)."""
        X = self._check_X(X)
        with _precision(X.dtype):
            return np.asarray(_model.gate_path_probs(self._spec, self._params_jax(), X))

    def apply(self, X):
        """Index of the most probable leaf for each sample (as ``DecisionTreeRegressor.apply``)."""
        return np.argmax(self.predict_leaf_proba(X), axis=1)

    def _core_y(self, y):
        return y

    def log_likelihood(self, X, y):
        """Per-sample conditional log-density log p(y | x), shape (n_samples,)."""
        X = self._check_X(X)
        with _precision(X.dtype):
            return np.asarray(_model.log_likelihood(self._spec, self._params_jax(), X, self._core_y(y)))

    def posterior_leaf_proba(self, X, y):
        """Posterior leaf probabilities h_l given (x, y), shape (n_samples, n_leaves)."""
        X = self._check_X(X)
        with _precision(X.dtype):
            return np.asarray(_model.posteriors(self._spec, self._params_jax(), X, self._core_y(y))["leaf"])

    def bic(self, X, y):
        """Bayesian information criterion -2 log L + k log n (lower is better)."""
        ll = self.log_likelihood(X, y)
        return float(-2 * ll.sum() + self._n_parameters(self._spec) * np.log(len(ll)))

    def aic(self, X, y):
        """Akaike information criterion -2 log L + 2 k."""
        ll = self.log_likelihood(X, y)
        return float(-2 * ll.sum() + 2 * self._n_parameters(self._spec))

    def icl(self, X, y):
        """Integrated completed likelihood: BIC + 2 × entropy of the leaf posteriors (Biernacki et al. 2000)."""
        h = self.posterior_leaf_proba(X, y)
        ent = -np.sum(np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0))
        return self.bic(X, y) + 2 * float(ent)

    def summary(self, X, y, sample_weight=None, se="observed", print_table=True):
        """Coefficient table with standard errors, z and p values (pass the training data).

        se : "observed" (inverse observed information, a JAX Hessian of the log-likelihood) or "sandwich"
        (the robust ``I⁻¹ J I⁻¹``). Leaves are in the canonical order of ``params_``. Returns a dict with the
        model-level numbers and ``table``: a list of rows (name, estimate, std_err, z, p_value); variances get
        no z or p (their null value lies on the boundary).
        """
        from scipy.stats import norm

        X_in = X
        X = self._check_X(X)
        yc = self._core_y(y)
        with _precision(X.dtype):
            est, sev, names, cov = standard_errors(
                self._spec, self._params_jax(), X, yc, sample_weight, kind=se,
                feature_names=getattr(self, "feature_names_in_", None),
            )
        rows = []
        for nm, b, s_ in zip(names, est, sev):
            var_like = nm.endswith("variance") or ": cov[" in nm
            z = np.nan if var_like or s_ == 0 else b / s_
            p = np.nan if np.isnan(z) else 2 * norm.sf(abs(z))
            rows.append({"name": nm, "estimate": float(b), "std_err": float(s_), "z": float(z), "p_value": float(p)})
        ll = float(self.log_likelihood(X_in, y).sum())
        out = {
            "estimator": type(self).__name__,
            "tree": repr(self._spec.tree),
            "gate": self._spec.gate,
            "expert": self._spec.expert,
            "n_samples": int(X.shape[0]),
            "n_parameters": self._n_parameters(self._spec),
            "log_likelihood": ll,
            "aic": self.aic(X_in, y),
            "bic": self.bic(X_in, y),
            "n_iter": self.n_iter_,
            "converged": self.converged_,
            "se": se,
            "table": rows,
            "covariance": cov,
        }
        if print_table:
            print(f"{out['estimator']}: {out['tree']}, {out['gate']} gates, {out['expert']} experts")
            print(f"n = {out['n_samples']}, parameters = {out['n_parameters']}, log-likelihood = {ll:.4f}, "
                  f"AIC = {out['aic']:.3f}, BIC = {out['bic']:.3f}, EM iterations = {self.n_iter_}, "
                  f"converged = {self.converged_}, standard errors: {se}")
            w = max(len(r["name"]) for r in rows)
            print(f"{'':{w}s} {'estimate':>12s} {'std err':>10s} {'z':>8s} {'P>|z|':>8s}")
            for r in rows:
                zs = "" if np.isnan(r["z"]) else f"{r['z']:8.2f}"
                ps = "" if np.isnan(r["p_value"]) else f"{r['p_value']:8.4f}"
                print(f"{r['name']:{w}s} {r['estimate']:12.6g} {r['std_err']:10.4g} {zs:>8s} {ps:>8s}")
        return out

    def save(self, path):
        """Save the fitted model (arrays + JSON metadata with version and checksum; no code runs on load).

        Load it back with :func:`hme.load`."""
        from ._persistence import save_estimator

        save_estimator(self, path)

    # -- readable views of the parameters (original input scale; gates in level order, leaves left to right)
    @property
    def gate_coef_(self):
        """(n_gates, branching, n_gate_features); softmax slopes (child 0 = reference, zeros) or Laplace keys."""
        check_is_fitted(self, "params_")
        return self.params_.gates.weight

    @property
    def gate_intercept_(self):
        """(n_gates, branching) gate biases (child 0 = reference, 0)."""
        check_is_fitted(self, "params_")
        return self.params_.gates.bias

    @property
    def n_leaves_(self):
        check_is_fitted(self, "params_")
        return self._spec.tree.n_leaves

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
