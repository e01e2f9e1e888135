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
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

import hme
from hme import model as _model
from hme import sharding
from hme.fitting import DEFAULT_VAR_FLOOR, input_variances, record_fit, standardised_gate_ridge
from hme.grow import single_expert_parameters
from hme.inference import n_free_parameters, standard_errors


class ExtrapolationWarning(UserWarning):
    """Inputs at prediction lie far outside the training data's range (shown once per call site)."""


#: ``alpha="auto"``: the experts' ridge, in pseudo-observations on the standardised input scale, towards the
#: pooled single-expert fit (``shrink_to="pooled"``).
AUTO_ALPHA = 10.0
#: Ridge (standardised scale) of the pooled fit itself.
POOLED_ALPHA = 1.0
#: ``gate_alpha="auto"``: softmax gates get the ridge of ``LogisticRegression()``'s default (C = 1) on the
#: standardised gate inputs; Laplace gates (whose keys are locations, not shrunk) this ridge on their biases.
AUTO_GATE_ALPHA = 1.0

#: A prediction input counts as far outside the training data when it lies beyond the training range by more
#: than this fraction of the range (in any feature).
FAR_OUTSIDE = 0.25


class NotIdentifiedWarning(UserWarning):
    """Some parameters are not identified by the data: their standard errors are NaN."""


class DegenerateFitWarning(UserWarning):
    """The returned fit has an empty leaf or a Gaussian expert whose variance sits on ``var_floor``."""


def check_sample_weight(sample_weight, X, dtype) -> np.ndarray:
    """``sample_weight`` as a 1-D array of ``dtype`` with one finite, non-negative weight per row of ``X``, not
    all zero (None: all ones; a number: that weight for every row)."""
    n = X.shape[0]
    if sample_weight is None:
        return np.ones(n, dtype=dtype)
    if isinstance(sample_weight, numbers.Number):
        sample_weight = np.full(n, sample_weight, dtype=dtype)
    else:
        sample_weight = check_array(sample_weight, ensure_2d=False, dtype=dtype, input_name="sample_weight")
        if sample_weight.ndim != 1:
            raise ValueError(f"sample_weight must be 1-D, got an array of shape {sample_weight.shape}")
        if sample_weight.shape[0] != n:
            raise ValueError(f"sample_weight has {sample_weight.shape[0]} entries for {n} samples")
    if not np.all(np.isfinite(sample_weight)):
        raise ValueError("sample_weight contains NaN or infinity")
    if np.any(sample_weight < 0):
        raise ValueError("Negative values in data passed to `sample_weight`")
    if not np.any(sample_weight > 0):
        raise ValueError("Sample weights must contain at least one non-zero number.")
    return sample_weight


def precision_scope(dtype):
    """Run the core in the input's precision without flipping the global x64 flag."""
    if np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def compute_scope(dtype, devices):
    """The context every core call of an estimator runs in: the input's precision (:func:`precision_scope`) and
    the rows split over ``devices`` (:mod:`hme.sharding`; 1 or None: one device)."""
    stack = contextlib.ExitStack()
    stack.enter_context(precision_scope(dtype))
    stack.enter_context(sharding.data_parallel(sharding.make_mesh(devices)))
    return stack


class HMEBase(BaseEstimator):
    #: the strength ``alpha="auto"`` stands for (pseudo-observations on the standardised scale)
    _auto_alpha = AUTO_ALPHA
    _parameter_constraints: dict = {
        "depth": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "max_leaf_nodes": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "grow_criterion": [StrOptions({"bic", "icl", "validation"})],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
        "prune": ["boolean"],
        "branching": [Interval(numbers.Integral, 2, None, closed="left"), tuple, list],
        "gate": [str, tuple, list],  # a registered gate family, or one per level (hme.families validates the names)
        "gate_features": [None, list, tuple, np.ndarray],
        "expert_features": [None, list, tuple, np.ndarray],
        "alpha": [Interval(numbers.Real, 0, None, closed="left"), StrOptions({"auto"})],
        "shrink_to": [StrOptions({"pooled", "zero"})],
        "gate_alpha": [Interval(numbers.Real, 0, None, closed="left"), StrOptions({"auto"})],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_candidates": [Interval(numbers.Integral, 1, None, closed="left")],
        "init_params": [StrOptions({"kmeans", "kmeans_xy", "random"})],
        "devices": [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"all"}), list, None],
        "gate_solver": [StrOptions({"newton", "bound"})],
        "solver": [StrOptions({"em", "gradient"})],
        "optimizer": [StrOptions({"lbfgs", "adam"})],
        "learning_rate": [None, Interval(numbers.Real, 0, None, closed="neither")],
        "batch_size": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(numbers.Integral, 1, None, closed="left")],
        "out_of_bounds": [StrOptions({"clip", "extrapolate"})],
    }

    # -- helpers ----------------------------------------------------------------------------------------
    def _tree(self):
        if self.depth is None:  # growth: the template's tree is replaced step by step (hme.grow)
            return hme.TreeSpec.complete(1, 2)
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

    def _scope(self, dtype):
        return compute_scope(dtype, getattr(self, "devices", 1))

    def _n_parameters(self, spec):
        if spec is getattr(self, "_spec", None) and self._single_expert():
            return single_expert_parameters(spec)
        return n_free_parameters(spec)

    def _single_expert(self) -> bool:
        """Growth kept one expert (held as a two-leaf tree with identical experts and a uniform gate)."""
        return getattr(self, "grown_structure_", None) == ()

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

    def _auto_strength(self, spec) -> float:
        """What ``alpha="auto"`` stands for with this tree."""
        return self._auto_alpha

    def _expert_ridge(self, X, Y, sample_weight, spec):
        """(α per expert feature, target slopes or None, noise scale or None): the ridge ``alpha`` on the
        standardised scale, α_j = alpha · Var(x_j), pulling towards the pooled fit (``shrink_to="pooled"``; itself
        fitted with the ridge POOLED_ALPHA, LogisticRegression's default C = 1, so separable classes stay finite)
        or towards 0. Gaussian experts measure it on the pooled fit's residual covariance (``coef_scale``)."""
        from hme.pooled import pooled_noise_scale, pooled_slopes

        strength = self._auto_strength(spec) if isinstance(self.alpha, str) else float(self.alpha)
        var = input_variances(X, sample_weight, spec.expert_features)
        if strength == 0:
            return 0.0 * var, None, None
        has_cov = spec.expert_family.has_cov
        if self.shrink_to == "zero" and not has_cov:
            return strength * var, None, None
        pooled = pooled_slopes(spec, X, Y, sample_weight, POOLED_ALPHA * var)
        target = None if self.shrink_to == "zero" else pooled
        floor = getattr(self, "var_floor", DEFAULT_VAR_FLOOR)
        return strength * var, target, pooled_noise_scale(spec, X, Y, sample_weight, pooled, floor)

    def _gate_ridge(self, X, sample_weight, spec):
        """``gate_alpha`` for the core: a number as given, or "auto": γ·[1, Var(x_1), ...] for softmax gates (a
        ridge on the standardised scale), γ for Laplace gates (biases only)."""
        if not isinstance(self.gate_alpha, str):
            return float(self.gate_alpha)
        return standardised_gate_ridge(spec, X, sample_weight, AUTO_GATE_ALPHA)

    def _engine_options(self, X, Y, sample_weight, spec, var_floor, start):
        """The core's keyword arguments for ``spec``: the ridges translated to it (``alpha`` on the standardised
        scale, towards the pooled fit; the gates' ridge) and the fitting options."""
        alpha, target, scale = self._expert_ridge(X, Y, sample_weight, spec)
        gate_alpha = self._gate_ridge(X, sample_weight, spec)
        return dict(sample_weight=sample_weight, init_params=self.init_params, start_params=start, coef_target=target,
                    coef_scale=scale,
                    n_init=1 if start is not None else self.n_init, n_candidates=self.n_candidates,
                    max_iter=self.max_iter, tol=self.tol, alpha=alpha, gate_alpha=gate_alpha, var_floor=var_floor,
                    verbose=int(bool(self.verbose)))

    def _run_engine(self, spec, X, Y, seed, reseed=None, layout=None, **options):
        """One fit by the chosen engine; ``reseed`` is EM's re-seeding after the fit and ``layout`` a capacity
        tree's structure (:func:`hme.fit_em`)."""
        with self._scope(X.dtype):
            if self.solver == "gradient":
                return hme.fit_gradient(spec, X, Y, optimizer=self.optimizer, learning_rate=self.learning_rate,
                                        batch_size=self.batch_size, random_state=seed, **options)
            return hme.fit_em(spec, X, Y, gate_solver=self.gate_solver, random_state=seed, reseed=reseed,
                              layout=layout, **options)

    def _grow(self, X, Y, sample_weight, template, var_floor, seed):
        """Grow the tree (:func:`hme.grow.grow_tree`); returns (spec, result) and sets ``growth_path_``."""
        from hme.grow import grow_tree

        def fit(Xf, Yf, wf):  # no re-seeding: growth's fresh starts play its part (one program less per tree)
            def run(spec, start, fresh=False, layout=None, max_iter=None):
                options = self._engine_options(Xf, Yf, wf, spec, var_floor, None if fresh else start)
                if max_iter is not None:  # a tree tried during growth (hme.grow.TRIAL_ITER)
                    options["max_iter"] = max_iter
                if not fresh:
                    return self._run_engine(spec, Xf, Yf, seed, reseed=False, layout=layout, **options)
                # the start as one more restart of the default fit: one program
                return self._run_engine(spec, Xf, Yf, seed, reseed=False, extra_start=start, layout=layout,
                                        **options)

            return run

        base = self._engine_options(X, Y, sample_weight, template, var_floor, None)
        local = {k: base[k] for k in ("n_candidates", "max_iter", "tol", "alpha", "gate_alpha", "var_floor",
                                      "coef_target", "coef_scale")}
        local.update(random_state=seed, gate_solver=self.gate_solver)
        rows = np.arange(X.shape[0])
        validation = None
        if self.grow_criterion == "validation":
            rng = np.random.default_rng(seed)
            n_val = int(np.ceil(self.validation_fraction * X.shape[0]))
            if X.shape[0] - n_val < 2 or n_val < 1:
                raise ValueError(f"validation_fraction={self.validation_fraction} leaves no training or validation "
                                 f"rows of {X.shape[0]}")
            perm = rng.permutation(X.shape[0])
            rows, val = np.sort(perm[n_val:]), np.sort(perm[:n_val])
            validation = (X[val], Y[val], np.asarray(sample_weight, np.float64)[val])
        with self._scope(X.dtype):
            grown = grow_tree(template, X[rows], Y[rows], sample_weight=sample_weight[rows], gate=self.gate,
                              max_leaf_nodes=self.max_leaf_nodes, criterion=self.grow_criterion,
                              validation=validation, prune=self.prune,
                              fit=fit(X[rows], Y[rows], sample_weight[rows]), local_options=local,
                              fixed_capacity=self.solver != "gradient")  # hme.capacity: EM's programs
        self.growth_path_ = [step._asdict() for step in grown.path]
        self.grown_structure_ = grown.structure
        result = grown.result
        if validation is not None:  # the chosen tree, refitted on every row from the grown parameters
            result = fit(X, Y, sample_weight)(grown.spec, jax.device_get(result.params))
        return grown.spec, result

    def _fit_core(self, X, Y, sample_weight, spec, var_floor=None):
        """Translate the hyperparameters, run the chosen engine (or grow the tree, ``depth=None``), store its
        :class:`hme.fitting.FitRecord` as fitted attributes (``name_``) and warn about what the record shows."""
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        if self.solver != "gradient" and self.batch_size is not None:
            raise ValueError("batch_size applies to solver='gradient' with optimizer='adam'")
        for name in ("growth_path_", "grown_structure_"):  # a refit with a fixed depth drops an earlier growth
            self.__dict__.pop(name, None)
        if self.depth is None:
            spec, res = self._grow(X, Y, sample_weight, spec, var_floor, seed)
        else:
            warm = self.warm_start and hasattr(self, "params_") and getattr(self, "_spec", None) == spec
            options = self._engine_options(X, Y, sample_weight, spec, var_floor, self._params_jax() if warm else None)
            res = self._run_engine(spec, X, Y, seed, **options)
        alpha, target, scale = self._expert_ridge(X, Y, sample_weight, spec)
        gate_alpha = self._gate_ridge(X, sample_weight, spec)
        self.expert_coef_target_ = None if target is None else target.astype(X.dtype)
        self.expert_coef_scale_ = None if scale is None else scale.astype(X.dtype)
        # the penalty the fit maximised against, for summary()'s curvature (as hme.fitting.prepare_fit builds it)
        a = np.asarray(alpha, np.float64)
        self._penalty = dict(alpha=a if a.ndim == 0 else np.concatenate([[0.0], a]),
                             gate_alpha=np.asarray(gate_alpha, np.float64), coef_target=target, coef_scale=scale)
        with self._scope(X.dtype):
            record = record_fit(spec, res, X, Y, sample_weight)
        self._spec = spec
        self.tree_ = spec.tree
        for name, value in record._asdict().items():
            setattr(self, name + "_", value)
        self._report_fit()
        return self

    def _report_fit(self):
        """Print the restarts' progress (``verbose``) and warn about failed, degenerate or unconverged fits."""
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
                stacklevel=4,
            )
        why = self.restart_degenerate_[self.best_restart_]
        if why:
            warnings.warn(
                f"the returned fit (restart {self.best_restart_} of {len(self.restart_degenerate_)}) is degenerate: "
                f"{why}. The model has more leaves than the data support or an expert interpolates a few points; "
                "try a smaller tree, a larger var_floor or alpha, or more restarts (n_init).",
                DegenerateFitWarning,
                stacklevel=4,
            )
        if not self.converged_:
            warnings.warn(
                f"{'EM' if self.solver == 'em' else self.optimizer} did not converge: the best of {self.n_init} "
                f"restart(s) (restart {self.best_restart_}) stopped "
                f"after max_iter={self.max_iter} iterations with relative change above tol={self.tol}. "
                "Try a larger max_iter or tol, more restarts (n_init)"
                + (", gate_solver='newton'" if self.gate_solver != "newton" else "")
                + ", or more regularisation (alpha, gate_alpha) if experts or gates separate the data perfectly.",
                ConvergenceWarning,
                stacklevel=4,
            )

    def _expert_box(self):
        """Each expert's input box for ``out_of_bounds="clip"``; None when extrapolating (or for old models)."""
        if self.out_of_bounds != "clip" or not hasattr(self, "expert_input_min_"):
            return None
        return (self.expert_input_min_, self.expert_input_max_)

    def _params_jax(self):
        return jax.tree_util.tree_map(lambda a: None if a is None else jax.numpy.asarray(a), self.params_)

    def _check_X(self, X):
        check_is_fitted(self, "params_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self._bound_inputs(X)

    def _bound_inputs(self, X):
        """Apply ``out_of_bounds`` to the gates' inputs: clip every input to the training range [x_min_, x_max_]
        ("clip"; the experts' own boxes are applied inside the core, see ``_expert_box``), or leave it
        ("extrapolate"). Either way, rows beyond the range by more than FAR_OUTSIDE of its width warn."""
        lo, hi = getattr(self, "x_min_", None), getattr(self, "x_max_", None)
        if lo is None:  # a model saved before the bounds were recorded
            return X
        slack = FAR_OUTSIDE * (hi - lo)
        far = (X < lo - slack) | (X > hi + slack)
        if far.any():
            cols = np.flatnonzero(far.any(axis=0))
            names = getattr(self, "feature_names_in_", None)
            what = [str(names[j]) if names is not None else str(j) for j in cols[:10]]
            warnings.warn(
                f"{int(far.any(axis=1).sum())} of {X.shape[0]} rows lie far outside the training data (beyond its "
                f"range by more than {FAR_OUTSIDE:g} of the range) in feature(s) {', '.join(what)}"
                + (" and more" if cols.size > 10 else "")
                + (": those inputs were clipped to the training range (out_of_bounds='clip')"
                   if self.out_of_bounds == "clip" else ": the linear experts and gates extrapolate there "
                   "(out_of_bounds='extrapolate'); predictions can be far off"),
                ExtrapolationWarning,
                stacklevel=3,
            )
        if self.out_of_bounds == "clip":
            X = np.clip(X, lo.astype(X.dtype), hi.astype(X.dtype))
        return X

    # -- shared public methods ----------------------------------------------------------------------------
    def predict_leaf_proba(self, X):
        """Gate path probabilities π_l(x) of every leaf, shape (n_samples, n_leaves)."""
        X = self._check_X(X)
        with self._scope(X.dtype):
            return np.asarray(_model.gate_path_probs(self._spec, self._params_jax(), X))  # gates: X clipped above

    def predict_expert_mean(self, X):
        """Every expert's own prediction μ_l(x) (class probabilities for classifiers), shape (n_samples, n_leaves)
        for one output, else (n_samples, n_leaves, n_outputs)."""
        X = self._check_X(X)
        with self._scope(X.dtype):
            mu = np.asarray(_model.leaf_means(self._spec, self._params_jax(), X, expert_box=self._expert_box()))
        return mu[..., 0] if mu.shape[-1] == 1 else mu

    def describe(self, X) -> str:
        """The fitted tree as indented text: each gate's strongest inputs and share of ``X``, each leaf's share,
        mean prediction and noise sd (:func:`hme.describe_tree`)."""
        from hme.describe import describe_tree

        X = self._check_X(X)
        with self._scope(X.dtype):
            return describe_tree(
                self._spec, self._params_jax(), X, feature_names=getattr(self, "feature_names_in_", None)
            )

    @property
    def spec_(self):
        """The fitted model's :class:`hme.ModelSpec` (tree, gate and expert families, feature subsets)."""
        check_is_fitted(self, "params_")
        return self._spec

    def apply(self, X):
        """Index of the most probable leaf for each sample (as ``DecisionTreeRegressor.apply``)."""
        return np.argmax(self.predict_leaf_proba(X), axis=1)

    def _core_y(self, y):
        return y

    def log_likelihood(self, X, y):
        """Per-sample conditional log-density log p(y | x), shape (n_samples,): the predictive density, with the
        experts' inputs clipped as ``out_of_bounds`` says (``bic``, ``aic``, ``icl`` and ``summary`` use the
        fitted parametric model)."""
        X = self._check_X(X)
        with self._scope(X.dtype):
            return np.asarray(_model.log_likelihood(self._spec, self._params_jax(), X, self._core_y(y),
                                                    expert_box=self._expert_box()))

    def posterior_leaf_proba(self, X, y):
        """Posterior leaf probabilities h_l given (x, y), shape (n_samples, n_leaves)."""
        X = self._check_X(X)
        with self._scope(X.dtype):
            return np.asarray(_model.posteriors(self._spec, self._params_jax(), X, self._core_y(y),
                                                expert_box=self._expert_box())["leaf"])

    def _parametric_log_likelihood(self, X, y):
        """log p(y | x) of the fitted parametric model (no ``out_of_bounds`` clipping of the experts)."""
        X = self._check_X(X)
        with self._scope(X.dtype):
            return np.asarray(_model.log_likelihood(self._spec, self._params_jax(), X, self._core_y(y)))

    def bic(self, X, y):
        """Bayesian information criterion -2 log L + k log n of the fitted parametric model (lower is better)."""
        ll = self._parametric_log_likelihood(X, y)
        return float(-2 * ll.sum() + self._n_parameters(self._spec) * np.log(len(ll)))

    def aic(self, X, y):
        """Akaike information criterion -2 log L + 2 k of the fitted parametric model."""
        ll = self._parametric_log_likelihood(X, y)
        return float(-2 * ll.sum() + 2 * self._n_parameters(self._spec))

    def icl(self, X, y):
        """Integrated completed likelihood: BIC + 2 × entropy of the leaf posteriors (Biernacki et al. 2000)."""
        X_checked = self._check_X(X)
        with self._scope(X_checked.dtype):
            h = np.asarray(_model.posteriors(self._spec, self._params_jax(), X_checked, self._core_y(y))["leaf"])
        ent = -np.sum(np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0))
        return self.bic(X, y) + 2 * float(ent)

    def summary(self, X, y, sample_weight=None, se="observed", ci_level=0.95):
        """Coefficient table with standard errors, z, p values and confidence intervals (pass the training data).

        se : "observed" (inverse observed information, a JAX Hessian of the log-likelihood) or "sandwich"
        (the robust ``I⁻¹ J I⁻¹``). Leaves are in the canonical order of ``params_``.

        Returns a ``pandas.DataFrame`` indexed by parameter name (a :class:`hme.table.ParameterTable` without
        pandas) with columns ``estimate, std_err, z, p_value, ci_lower, ci_upper``. Wald intervals
        ``estimate ± z_{(1+ci_level)/2}·std_err``; variances get an interval on the log scale and no z or p
        (their null value lies on the boundary). Parameters the data do not identify (a singular information
        matrix: a saturated gate, a leaf without data) get NaN, with a warning that names them. Model-level
        numbers (log-likelihood, AIC, BIC, n_samples, n_parameters, iterations, convergence, the covariance
        matrix of the estimates) are in ``table.attrs``. Nothing is printed: ``print(table)``.
        """
        from scipy.stats import norm

        from hme.table import make_table

        if se not in ("observed", "sandwich"):
            raise ValueError(f"se must be 'observed' or 'sandwich', got {se!r}")
        if not 0 < ci_level < 1:
            raise ValueError(f"ci_level must lie in (0, 1), got {ci_level!r}")
        X_in = X
        X = self._check_X(X)
        yc = self._core_y(y)
        if sample_weight is not None:
            sample_weight = check_sample_weight(sample_weight, X, dtype=X.dtype)
        pen = getattr(self, "_penalty", None)
        opts = None
        if pen is not None:
            opts = hme.FitOptions(tol=0.0, alpha=pen["alpha"], gate_alpha=pen["gate_alpha"], var_floor=np.ones(1),
                                  coef_target=pen["coef_target"], coef_scale=pen.get("coef_scale"))
        with self._scope(X.dtype):
            res = standard_errors(self._spec, self._params_jax(), X, yc, sample_weight, kind=se,
                                  feature_names=getattr(self, "feature_names_in_", None), penalty_opts=opts)
        est, sev, names = res.estimate, res.std_err, res.names
        var_like = np.array([nm.endswith("variance") or ": cov[" in nm for nm in names], bool)
        zq = norm.ppf(0.5 + ci_level / 2)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            z = np.where(var_like, np.nan, est / sev)
            p = 2 * norm.sf(np.abs(z))
            log_half = zq * sev / est  # delta method on log(variance)
            lo = np.where(var_like, est * np.exp(-log_half), est - zq * sev)
            hi = np.where(var_like, est * np.exp(log_half), est + zq * sev)
        if res.not_identified.any():
            bad = [names[k] for k in np.flatnonzero(res.not_identified)]
            neg = [names[k] for k in np.flatnonzero(res.negative_curvature)]
            warnings.warn(
                f"{len(bad)} of {len(names)} parameters are not identified by these data (the observed information "
                f"is singular in their directions), so their standard errors are NaN: {', '.join(bad)}"
                + (f". The log-likelihood curves upward along {', '.join(neg)}: the fit is not at a maximum"
                   if neg else ". Typical causes: a gate that separates the data perfectly (its slopes can grow "
                   "without bound), a leaf with almost no data, or a constant or duplicated input"),
                NotIdentifiedWarning,
                stacklevel=2,
            )
        pll = self._parametric_log_likelihood(X_in, y)
        ll = float(pll.sum()) if sample_weight is None else float(np.dot(sample_weight, pll))
        k = self._n_parameters(self._spec)
        n = int(X.shape[0])
        attrs = {
            "estimator": type(self).__name__,
            "tree": repr(self._spec.tree),
            "gate": self._spec.gate,
            "expert": self._spec.expert,
            "n_samples": n,
            "n_parameters": k,
            "log_likelihood": ll,
            "aic": -2 * ll + 2 * k,
            "bic": -2 * ll + k * np.log(n),
            "n_iter": self.n_iter_,
            "converged": self.converged_,
            "se": se,
            "ci_level": ci_level,
            "covariance": res.covariance,
            "not_identified": [names[k] for k in np.flatnonzero(res.not_identified)],
        }
        cols = {"estimate": est, "std_err": sev, "z": z, "p_value": p, "ci_lower": lo, "ci_upper": hi}
        return make_table(cols, names, attrs)

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
        return 1 if self._single_expert() else self._spec.tree.n_leaves

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
