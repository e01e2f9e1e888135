"""HMERegressor: Gaussian (single or multi-output) or Poisson experts behind the scikit-learn API."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

import hme
from hme import model as _model
from hme import predictive
from hme.families import expert_family, expert_names

from ._base import HMEBase, check_sample_weight
from ._streaming import StreamingMixin


class HMERegressor(StreamingMixin, RegressorMixin, HMEBase):
    """Hierarchical mixture of experts regression (Jordan & Jacobs 1994), fitted by compiled EM.

    Parameters
    ----------
    depth : int or None, default=2
        Levels of gates (a binary depth-4 tree has 16 experts). None grows the tree instead (:mod:`hme.grow`):
        from one expert, binary splits best-first while ``grow_criterion`` improves, then pruning.
    branching : int or tuple of int, default=2
        Children per gate, or per level (fixed trees).
    max_leaf_nodes : int or None, default=None
        With ``depth=None``: at most this many experts (None: as many as the criterion supports).
    grow_criterion : {"bic", "icl", "validation"}, default="bic"
        What a split or a pruning must improve: BIC, ICL, or the log-likelihood of ``validation_fraction`` of
        the rows held out (the final tree is then refitted on all rows).
    validation_fraction : float, default=0.1
    prune : bool, default=True
        After growth, collapse gates over leaves into one expert while the criterion improves.
    gate : str or tuple of str, default="softmax"
        A gate family registered in :mod:`hme.families`: "softmax" (multinomial logit on the inputs), "laplace"
        (distance to learned keys), "gaussian" (a Gaussian mixture on the inputs), or one per-level family per
        level, e.g. ``("softmax", "laplace")``.
    expert : str, default="gaussian"
        A registered regression expert family: "gaussian" (linear, identity link), "student_t" (linear with
        Student-t noise: robust to outliers, degrees of freedom per expert; ECM as in Peel & McLachlan 2000) or
        "poisson" (log link, counts).
    expert_df : float or None, default=None
        Student-t experts: fixed degrees of freedom for every expert; None estimates one per expert
        (``expert_df_``, within [0.5, 200]).
    covariance_type : {"full", "diag", "spherical"}, default="full"
        Noise covariance of Gaussian experts with several outputs.
    shared_covariance : bool, default=False
        One noise covariance shared by all experts.
    gate_features, expert_features : list of int or str, default=None
        Columns (indices, or names when fitted on a DataFrame) seen by the gates / experts; None means all,
        ``[]`` an intercept-only gate (a mixture of regressions with constant weights).
    shared_coef : list of int or str, default=None
        Fixed effects: columns (indices or names, among the expert features) whose coefficients are common to all
        experts, as in flexmix's ``FLXMRglmfix(fixed = ~ ...)``; intercepts and the other coefficients vary by
        expert. EM ties them in the M-step (for Gaussian and Student-t experts the leaves' weighted least-squares
        equations are scaled by their precisions and solved jointly); standard errors, BIC and the gradient solver
        count them once. Gaussian/Student-t experts with one output, and Poisson experts.
    alpha : float or "auto", default="auto"
        Ridge on the experts' slopes on the standardised input scale, in pseudo-observations: the penalty is
        ``½ Σ_l Σ_j α Var(x_j) (b_lj - t_j)² / s²`` with ``s²`` the pooled fit's residual variance
        (``expert_coef_scale_``; several outputs: ``tr(S⁻¹ ...)`` with its residual covariance; Poisson
        experts: no ``s²``), so a leaf as noisy as the pooled fit needs about α rows of its own before its slopes
        leave the target ``t``, and a leaf that fits its rows k times more tightly about α/k. "auto" is
        ``estimators._base.AUTO_ALPHA`` (10).
    shrink_to : {"pooled", "zero"}, default="pooled"
        The ridge's target ``t``: the slopes of one expert fitted to all the data (``expert_coef_target_``; a
        deep tree on little data then degrades towards the linear model instead of fitting noise), or 0.
    gate_alpha : float or "auto", default="auto"
        Ridge on gate coefficients. "auto": softmax gates get ``LogisticRegression()``'s default ridge (C = 1)
        on the standardised inputs, ``½ γ (b² + Σ_j Var(x_j) w_j²)`` with γ = 1, so a gate cannot split the
        training data perfectly with ever steeper slopes; Laplace gates γ on their biases. A number: that ridge
        on the raw scale (as before).
    var_floor : float, default=1e-6
        Floor on expert variances, relative to the variance of each output.
    max_iter, tol, n_init, init_params, random_state, warm_start, verbose, verbose_interval
        As in :class:`sklearn.mixture.GaussianMixture` (``tol`` bounds the change of the mean penalised
        log-likelihood, relative once it exceeds 1 nat per sample in size, else absolute; ``init_params`` in
        {"random", "kmeans", "kmeans_xy"}). ``n_init`` counts full EM runs.
    out_of_bounds : {"clip", "extrapolate"}, default="clip"
        "clip": at prediction, the gates see every input clipped to its training range ``[x_min_, x_max_]``
        and each expert sees its inputs clipped to the range of the training rows it explains (leaf posterior
        ≥ 0.5: ``expert_input_min_``, ``expert_input_max_``), as ``IsotonicRegression(out_of_bounds="clip")``
        does for one input. A linear expert is then never asked to extrapolate beyond its own data, where its
        slope was never checked. "extrapolate": the fitted parametric model at any input. Predictions,
        intervals and ``log_likelihood`` use the choice; ``summary`` always describes the parametric model.
        Rows beyond the training range by more than a quarter of its width raise an ``ExtrapolationWarning``.
    n_candidates : int, default=20
        emEM start (Biernacki, Celeux & Govaert 2003): each of the ``n_init`` runs starts from the best of
        ``n_candidates`` random starts after 10 EM iterations each (on at most 4096 rows drawn ∝ sample_weight).
        1 turns the screening off.
    gate_solver : {"newton", "bound"}, default="newton"
        EM's gate step: exact IRLS Hessian or Böhning's bound.
    solver : {"em", "gradient"}, default="em"
        EM, or gradient-based maximum likelihood on the same objective (:func:`hme.fit_gradient`).
    optimizer : {"lbfgs", "adam"}, default="lbfgs"
        The gradient solver's optimiser (optax); ``learning_rate`` (Adam's step, default 1e-2; L-BFGS uses a
        line search) and ``batch_size`` (Adam on minibatches, reshuffled every epoch; ``max_iter`` then counts
        epochs) go with it.

    devices : int, "all" or list of devices, default=1
        Data parallelism: the rows are split over this many devices (a 1-D ``jax.sharding.Mesh``, parameters
        replicated, statistics all-reduced by the compiler; :mod:`hme.sharding`) in fit and prediction. The answer
        equals one device's up to rounding. On a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set
        before JAX starts) makes N host devices.
    chunk_size : int or None, default=None
        Out-of-core EM (:mod:`hme.streaming`): ``fit`` reads the rows in chunks of this many and runs exact EM
        over them, memory bounded by the chunk. None streams only data that is out of core anyway (an
        ``np.memmap``, a zarr or dask array, or ``X=hme.sources.Parquet(path, X=[...], y=...)`` with ``y=None``),
        in chunks of 65,536 rows. Gaussian experts under softmax gates on every input, fixed depth; each
        iteration is one pass with Böhning's bound step for the gates (``gate_solver="bound"``), started from an
        in-memory fit on 20,000 rows drawn uniformly.
    step_exponent : float in (0.5, 1], default=0.6
        ``partial_fit`` (online EM): the t-th batch after the first moves the running moments by
        ``(t + 1)^(-step_exponent)``.

    Attributes
    ----------
    params_ : HMEParams of NumPy arrays (gates in level order, leaves left to right)
    gate_coef_, gate_intercept_, expert_coef_, expert_intercept_, expert_var_ : readable views
    n_iter_, converged_, lower_bound_, lower_bounds_, log_likelihood_ : EM diagnostics
    n_features_in_, feature_names_in_, n_outputs_
    x_min_, x_max_ : training range of every input (rows with positive weight), used by ``out_of_bounds``
    expert_input_min_, expert_input_max_ : (n_leaves, n_expert_features) range of the rows each expert explains
    expert_coef_target_, expert_coef_scale_ : the expert ridge's target slopes (p_e, n_outputs) and noise scale
        (n_outputs, n_outputs) (None when ``alpha=0``, ``shrink_to="zero"`` for the target; not saved by ``save``)
    """

    _parameter_constraints = {
        **HMEBase._parameter_constraints,
        "expert": [str],  # a registered regression expert family (checked in fit)
        "covariance_type": [StrOptions({"full", "diag", "spherical"})],
        "shared_covariance": ["boolean"],
        "expert_df": [None, Interval(numbers.Real, 0, None, closed="neither")],
        "shared_coef": [None, list, tuple, np.ndarray],
        "var_floor": [Interval(numbers.Real, 0, None, closed="neither")],
        "chunk_size": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "step_exponent": [Interval(numbers.Real, 0.5, 1, closed="right")],
    }

    def __init__(
        self,
        depth=2,
        branching=2,
        max_leaf_nodes=None,
        grow_criterion="bic",
        validation_fraction=0.1,
        prune=True,
        gate="softmax",
        expert="gaussian",
        covariance_type="full",
        shared_covariance=False,
        expert_df=None,
        gate_features=None,
        expert_features=None,
        shared_coef=None,
        alpha="auto",
        shrink_to="pooled",
        gate_alpha="auto",
        var_floor=1e-6,
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
        chunk_size=None,
        step_exponent=0.6,
    ):
        self.depth = depth
        self.branching = branching
        self.max_leaf_nodes = max_leaf_nodes
        self.grow_criterion = grow_criterion
        self.validation_fraction = validation_fraction
        self.prune = prune
        self.gate = gate
        self.expert = expert
        self.covariance_type = covariance_type
        self.shared_covariance = shared_covariance
        self.expert_df = expert_df
        self.gate_features = gate_features
        self.expert_features = expert_features
        self.shared_coef = shared_coef
        self.alpha = alpha
        self.shrink_to = shrink_to
        self.gate_alpha = gate_alpha
        self.var_floor = var_floor
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
        self.chunk_size = chunk_size
        self.step_exponent = step_exponent

    def fit(self, X, y, sample_weight=None):
        """Fit by EM. ``y`` of shape (n_samples,) or (n_samples, n_outputs); out-of-core data (``chunk_size``)
        is streamed."""
        self._validate_params()
        self.__dict__.pop("_online", None)  # a fit starts over; partial_fit continues from it no more
        if self.chunk_size is not None or hme.sources.is_out_of_core(X) or hme.distributed.n_processes() > 1:
            return self._fit_streamed(X, y, sample_weight)
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32])
        y = np.asarray(y, dtype=X.dtype)
        self._y_1d = y.ndim == 1
        Y = y[:, None] if y.ndim == 1 else y
        self.n_outputs_ = Y.shape[1]
        sample_weight = check_sample_weight(sample_weight, X, dtype=X.dtype)
        if not sample_weight.sum() > 0:
            raise ValueError("sample_weight must have a positive sum")
        if self.expert not in expert_names("regression"):
            raise ValueError(f"expert must be one of {expert_names('regression')}, got {self.expert!r}")
        expert_family(self.expert).check_targets(Y)
        spec = hme.ModelSpec(
            tree=self._tree(),
            n_features=self.n_features_in_,
            n_targets=self.n_outputs_,
            gate=self.gate,
            expert=self.expert,
            gate_features=self._resolve_features(self.gate_features, "gate_features"),
            expert_features=self._resolve_features(self.expert_features, "expert_features"),
            covariance_type=self.covariance_type,
            shared_covariance=self.shared_covariance,
            expert_df=self.expert_df,
            shared_coef=self._resolve_features(self.shared_coef, "shared_coef"),
        )
        self._check_min_samples(X.shape[0], spec)
        return self._fit_core(X, Y, sample_weight, spec, self.var_floor)

    def _core_y(self, y):
        y = np.asarray(y)
        return y[:, None] if y.ndim == 1 else y

    def predict(self, X):
        """Predictive mean E[y | x]."""
        X = self._check_X(X)
        with self._scope(X.dtype):
            mean = np.asarray(_model.predict_mean(self._spec, self._params_jax(), X, expert_box=self._expert_box()))
        return mean[:, 0] if self._y_1d else mean

    # -- the predictive distribution ----------------------------------------------------------------------
    def _mixture(self, X):
        X = self._check_X(X)
        with self._scope(X.dtype):
            pi = np.asarray(_model.gate_path_probs(self._spec, self._params_jax(), X), np.float64)
            mu = np.asarray(_model.leaf_means(self._spec, self._params_jax(), X, expert_box=self._expert_box()),
                            np.float64)
        return pi, mu

    def predict_std(self, X):
        """Standard deviation of the predictive mixture (per output)."""
        pi, mu = self._mixture(X)
        std = predictive.mixture_std(self._spec, self.params_.experts, pi, mu)
        return std[:, 0] if self._y_1d else std

    def predict_quantiles(self, X, q):
        """Quantiles of the predictive mixture, found by bisection on its CDF.

        Returns an array of shape (n_samples, len(q)) for one output, (n_samples, n_outputs, len(q)) otherwise.
        """
        pi, mu = self._mixture(X)
        out = predictive.mixture_quantiles(self._spec, self.params_.experts, pi, mu, q)
        return out[:, 0, :] if self._y_1d else out

    def predict_interval(self, X, coverage=0.9):
        """Central predictive interval ``(lower, upper)`` with the given coverage."""
        if not 0 < coverage < 1:
            raise ValueError("coverage must lie strictly between 0 and 1")
        qs = self.predict_quantiles(X, [(1 - coverage) / 2, (1 + coverage) / 2])
        return qs[..., 0], qs[..., 1]

    def sample_y(self, X, n_samples=1, random_state=0):
        """Draws from the predictive distribution: (n, n_samples), or (n, n_outputs, n_samples)."""
        rng = check_random_state(random_state)
        pi, mu = self._mixture(X)
        draws = predictive.mixture_sample(self._spec, self.params_.experts, pi, mu, n_samples, rng)
        return draws[:, 0, :] if self._y_1d else draws

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    # -- readable views --------------------------------------------------------------------------------
    @property
    def expert_coef_(self):
        """(n_leaves, n_expert_features) for one output, (n_leaves, n_expert_features, n_outputs) otherwise."""
        check_is_fitted(self, "params_")
        c = self.params_.experts.coef
        return c[..., 0] if self._y_1d else c

    @property
    def expert_intercept_(self):
        check_is_fitted(self, "params_")
        b = self.params_.experts.intercept
        return b[:, 0] if self._y_1d else b

    @property
    def expert_df_(self):
        """Student-t experts: (n_leaves,) degrees of freedom."""
        check_is_fitted(self, "params_")
        if self.params_.experts.df is None:
            raise AttributeError(f"{self.expert!r} experts have no degrees of freedom")
        return self.params_.experts.df

    @property
    def expert_var_(self):
        """Gaussian experts: (n_leaves,) variances for one output, (n_leaves, m, m) covariances otherwise
        (Student-t experts: the squared scales, the variance being ν/(ν - 2) times it)."""
        check_is_fitted(self, "params_")
        cov = self.params_.experts.cov
        if cov is None:
            raise AttributeError("Poisson experts have no variance parameter")
        return cov[:, 0, 0] if self._y_1d else cov
