r"""The contracts of gate and expert families.

A family is a stateless object of pure functions on arrays (in the style of optax's transformations and
dynamax's distributions): the static choices live in :class:`hme.spec.ModelSpec`, the arrays in the parameter
pytrees. Every function is batched over gates (``G`` of them, each with at most ``B`` children) or over leaves
(``L``), with no Python loop over either.

Shapes: ``n`` rows, gate design ``(n, q_g)``, expert design ``(n, 1 + p_e)`` (intercept first), targets ``y``
``(n, m)`` (one-hot ``(n, C)`` for classes), ``k = n_outputs(m)`` expert output columns.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..params import ExpertParams, GateParams


class GateProblem(NamedTuple):
    """What a gate M-step sees: the expected complete-data log-likelihood of its gates,
    ``Σ_t Σ_g Σ_c e_tgc log g_gc(x_t)`` minus the family's penalty.

    design : (n, q) the gate design in this family's form (:attr:`GateFamily.intercept`);
    log_prob : (n, G, B) current log gate probabilities; edge_w : (n, G, B) posterior mass through each edge
    times sample weight (soft targets); node_w : (n, G) posterior mass at each gate (case weights);
    root_w : (n,) the root's mass (the sample weights); mask : (G, B) NumPy bool, existing children;
    gate_alpha : ridge, scalar or (q,); solver : the estimator's ``gate_solver``;
    node_gram, hessian_gram : optional precomputed weighted Gram matrices (softmax's bound/Newton solvers).
    """

    design: jax.Array
    log_prob: jax.Array
    edge_w: jax.Array
    node_w: jax.Array
    root_w: jax.Array
    mask: np.ndarray
    gate_alpha: jax.Array
    solver: str = "newton"
    node_gram: jax.Array | None = None
    hessian_gram: jax.Array | None = None


class GateFamily:
    """A gate family: ``g_{g,c}(x) = softmax_c(logit_{g,c}(x))`` over the children c of gate g.

    Class attributes describe the family's structure; methods do its arithmetic. Subclasses override
    :meth:`logits` and :meth:`m_step` at least, and register an instance with :func:`hme.families.register_gate`.
    """

    #: the name ``ModelSpec(gate=...)`` and the estimators take
    name: str = ""
    #: reads the design ``[1, X_gate]`` (a linear score) rather than the raw gate inputs
    intercept: bool = False
    #: may sit on some levels of a tree whose other levels use other per-level families
    per_level: bool = True
    #: a density on the inputs, ``g_c(x) ∝ π_c p(x | c)``: the tree has this one gate, and EM maximises the joint
    #: likelihood of (x, y), adding :meth:`log_marginal`
    models_inputs: bool = False
    #: child 0's bias is fixed at 0 (identifiability); False when the biases are free log-weights
    reference_bias: bool = True
    #: child 0's weight row is fixed at 0 (softmax slopes are relative to the reference child)
    reference_weight: bool = False
    #: the weight rows are shrunk by the ridge (slopes) or not (locations)
    penalise_weight: bool = False
    #: a linear logit whose M-step can take node Gram matrices (Böhning's bound) and the exact Newton Hessian
    #: from the experts' Gram pass; it then also accepts one ridge value per design column
    uses_node_gram: bool = False
    #: the M-step is an exact maximiser that does not depend on the current gates (one step suffices)
    closed_form: bool = False
    #: the word for one entry of a weight row, in parameter names ("coef", "key", "mean")
    weight_label: str = "coef"
    #: the Bayesian model's sample site for the weight rows
    weight_site: str = "gate_weight"
    #: the weight rows are locations in input space (they move when the inputs are shifted, and start at the
    #: centroids of their children's data)
    locations: bool = False
    #: the M-step's objective has several local maxima in the weight rows (keys that can sit anywhere along the
    #: data): EM's fit is followed by runs whose rows are re-drawn at data points (:func:`hme.em.fit_em`)
    reseeds: bool = False

    #: parameters of a flat mixture's atoms that the Voronoi-loss theory covers (empty: not covered)
    voronoi_parameters: tuple = ()

    def voronoi_exponents(self, rbar: float) -> dict:
        """Exponent of each parameter's discrepancy in a Voronoi cell of m ≥ 2 fitted atoms, given the solvability
        number ``rbar`` = r̄(m) (docs/theory.md)."""
        raise ValueError(f"the Voronoi theory does not cover {self.name!r} gates")

    def logits(self, spec, design: jax.Array, gates: GateParams) -> jax.Array:
        """(n, G, B) unnormalised log gate probabilities."""
        raise NotImplementedError

    def m_step(self, spec, gates: GateParams, problem: GateProblem) -> GateParams:
        """New gate parameters that do not decrease the problem's objective (a generalised M-step)."""
        raise NotImplementedError

    def penalty(self, gates: GateParams, gate_alpha) -> jax.Array:
        """The ridge ``½ α (Σ b² [+ Σ w²])`` on the scale of the summed log-likelihood."""
        pen = jnp.sum(gates.bias**2)
        if self.penalise_weight:
            pen = pen + jnp.sum(gates.weight**2)
        return 0.5 * gate_alpha * pen

    def shift(self, gates: GateParams, shift: jax.Array, sign: float) -> GateParams:
        """Re-express the gates for inputs moved by ``-sign · shift`` (an exact reparametrisation):
        locations move with the inputs, slopes fold the shift into the biases."""
        if self.locations:
            return GateParams(gates.bias, gates.weight - sign * shift, gates.cov)
        return GateParams(gates.bias + sign * jnp.einsum("gcp,p->gc", gates.weight, shift), gates.weight, gates.cov)

    def zeros(self, G: int, B: int, p: int, dtype) -> GateParams:
        return GateParams(jnp.zeros((G, B), dtype), jnp.zeros((G, B, p), dtype))

    def start(self, gates: GateParams, design: jax.Array, edge_w: jax.Array, mask: np.ndarray) -> GateParams:
        """Gates before the start's Newton steps: location families put each child's row at the centroid of the
        rows it receives, ``Σ_t e_tgc x_t / Σ_t e_tgc``."""
        if not self.locations:
            return gates
        mass = jnp.sum(edge_w, 0)
        keys = jnp.einsum("ngb,np->gbp", edge_w, design) / jnp.maximum(mass, jnp.finfo(design.dtype).tiny)[..., None]
        return GateParams(gates.bias, jnp.where(jnp.asarray(mask)[..., None], keys, 0.0), gates.cov)

    def free_masks(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(bias, weight-row) NumPy masks, each (G, B), of the free entries."""
        bias, weight = mask.copy(), mask.copy()
        if self.reference_bias:
            bias[:, 0] = False
        if self.reference_weight:
            weight[:, 0] = False
        return bias, weight

    def canonical_rows(self, bias: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One gate's children in a new order (``bias`` (k,), ``weight`` (k, p)) with the reference conventions
        restored: the first child's bias (and weight row, where it is a reference) becomes 0."""
        if self.reference_bias:
            bias = bias - bias[0]
        if self.reference_weight:
            weight = weight - weight[0]
        return bias, weight

    def n_parameters(self, n_children: int, p: int) -> int:
        """Free parameters of one gate with ``n_children`` children and ``p`` inputs (for BIC/AIC)."""
        return (n_children - self.reference_bias) + (n_children - self.reference_weight) * p

    # -- the unconstrained parameterisation (gradient solvers) ----------------------------------------------
    def extra_unconstrained(self, gates: GateParams) -> dict:
        """Unconstrained forms of parameters beyond bias and weight (e.g. covariances)."""
        return {}

    def constrain(self, bias_free: jax.Array, bias_mask: np.ndarray, u: dict) -> tuple[jax.Array, jax.Array | None]:
        """(bias, cov) from the unconstrained values; fixed biases are 0."""
        return jnp.where(bias_mask, bias_free, 0.0), None

    def log_marginal(self, spec, design: jax.Array, gates: GateParams) -> jax.Array:
        """(n,) ``log p(x_t)`` of a family that models the inputs."""
        raise NotImplementedError(f"the {self.name!r} gate does not model the inputs")

    def weight_prior_sd(self, x_sd: jax.Array, priors) -> jax.Array:
        """Prior standard deviation of the weight rows on centred inputs with standard deviations ``x_sd``."""
        return priors.gate_scale / x_sd


#: M-steps at most in the default pooled fit (:meth:`ExpertFamily.pooled_fit`)
MAX_POOLED_STEPS = 200


class ExpertFamily:
    """An expert family: ``p(y | x, leaf l)`` with linear predictor ``η_l = θ_lᵀ [1, x]`` (θ_l (1 + p_e, k)).

    Subclasses override :meth:`log_prob`, :meth:`mean`, :meth:`m_step` at least, and register an instance with
    :func:`hme.families.register_expert`.
    """

    name: str = ""
    #: ``"regression"`` (HMERegressor) or ``"classification"`` (HMEClassifier; targets are classes)
    task: str = "regression"
    #: has a noise covariance ``Σ_l`` (``ExpertParams.cov``), floored at ``var_floor``
    has_cov: bool = False
    #: the fewest targets (classes) a model needs
    min_targets: int = 1
    #: takes the leaf-weighted Gram matrices ``Dᵀ H_l D`` in its M-step (given the expert solver)
    uses_gram: bool = False
    #: the M-step is an exact maximiser that does not depend on the current experts (one step suffices)
    closed_form: bool = False
    #: has degrees of freedom ``ExpertParams.df`` (Student-t): estimated, or fixed by ``ModelSpec.expert_df``
    has_df: bool = False
    #: the M-step can hold some coefficient rows common to all leaves (``ModelSpec.shared_coef``)
    supports_shared_coef: bool = False

    def n_outputs(self, n_targets: int) -> int:
        """Columns ``k`` of the coefficient matrices."""
        return n_targets

    def needs_gram(self, solver: str) -> bool:
        return self.uses_gram

    def check_targets(self, y: np.ndarray) -> None:
        """Raise ``ValueError`` for targets outside the family's support."""

    def prepare_targets(self, y: jax.Array, n_targets: int, dtype) -> jax.Array:
        """Targets as :meth:`log_prob` takes them, (n, m)."""
        return (y[:, None] if y.ndim == 1 else y).astype(dtype)

    def output_label(self, k: int, j: int) -> str:
        """Suffix naming output column ``j`` of ``k`` in parameter names."""
        return "" if k == 1 else f" [y{j}]"

    def log_prob(self, spec, experts: ExpertParams, design: jax.Array, y: jax.Array):
        """``(log p(y_t | x_t, l) (n, L), aux)``; ``aux`` is handed back to :meth:`m_step`."""
        raise NotImplementedError

    def mean(self, spec, experts: ExpertParams, design: jax.Array) -> jax.Array:
        """(n, L, m) per-leaf predictive means (class probabilities)."""
        raise NotImplementedError

    def log_mean(self, spec, experts: ExpertParams, design: jax.Array) -> jax.Array:
        """(n, L, C) per-leaf log class probabilities (classification families)."""
        return jnp.log(self.mean(spec, experts, design))

    def penalty(self, spec, experts: ExpertParams, alpha, target=None, scale=None) -> jax.Array:
        """The ridge on the slopes, ``½ Σ_l Σ_j α_j ‖θ_lj - T_j‖²`` (intercepts free; ``scale`` is the noise scale
        of families with a covariance, None here)."""
        from .linear import ridge_columns, slope_deviation

        dev = slope_deviation(experts.coef, target)
        return 0.5 * jnp.einsum("lpk,p->", dev**2, ridge_columns(alpha, dev.shape[1] + 1, dev.dtype)[1:])

    def m_step(self, spec, experts, design, y, leaf_w, aux, leaf_gram, opts, solver: str = "newton") -> ExpertParams:
        """New expert parameters that do not decrease ``Σ_t Σ_l h_tl w_t log p(y_t | x_t, l) - penalty``."""
        raise NotImplementedError

    def initial_fit(self, spec, experts: ExpertParams, design, y, leaf_w, leaf_gram, opts, solver: str,
                    n_steps: int) -> ExpertParams:
        """Experts fitted to fixed leaf weights ``leaf_w`` (n, L) from ``experts`` (zeros): one M-step for
        closed-form families, ``n_steps`` warm M-steps otherwise (the start of every random restart)."""

        def step(_, ex):
            _, aux = self.log_prob(spec, ex, design, y)
            return self.m_step(spec, ex, design, y, leaf_w, aux, leaf_gram, opts, solver=solver)

        return jax.lax.fori_loop(0, 1 if self.closed_form else n_steps, step, experts)

    def pooled_fit(self, D: np.ndarray, y, w: np.ndarray, pen: np.ndarray, n_targets: int) -> np.ndarray:
        """(q, k) coefficients of one expert fitted to all rows: design ``D`` (n, q) with the intercept column
        first, targets as the core takes them, weights ``w`` (n,), ridge ``pen`` (q,) (0 on the intercept). The
        target of the experts' ``shrink_to="pooled"`` ridge (:mod:`hme.pooled`).

        The default iterates the family's own M-step on one leaf that holds every row (``spec`` is None there),
        until the penalised log-likelihood stops rising; the built-in families override it with a NumPy float64
        fit."""
        from ..fitting import FitOptions

        dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
        D = jnp.asarray(D, dtype)
        Y = self.prepare_targets(jnp.asarray(y), n_targets, dtype)
        q, k, m = D.shape[1], self.n_outputs(n_targets), Y.shape[1]
        leaf_w = jnp.asarray(w, dtype)[:, None]
        opts = FitOptions(tol=jnp.asarray(0.0, dtype), alpha=jnp.asarray(pen, dtype), gate_alpha=jnp.zeros((), dtype),
                          var_floor=jnp.full((m if self.has_cov else k,), jnp.finfo(dtype).eps, dtype))
        gram = (D.T @ (leaf_w * D))[None]
        experts, last = self.zeros(1, q - 1, k, m, dtype), -np.inf
        for _ in range(MAX_POOLED_STEPS):
            ll, aux = self.log_prob(None, experts, D, Y)
            value = float(jnp.sum(leaf_w[:, 0] * ll[:, 0]) - self.penalty(None, experts, opts.alpha))
            if value - last <= 1e-10 * max(1.0, abs(value)):
                break
            last = value
            experts = self.m_step(None, experts, D, Y, leaf_w, aux, gram, opts)
        return np.concatenate([np.asarray(experts.intercept, np.float64), np.asarray(experts.coef[0], np.float64)])

    def n_noise_parameters(self, spec) -> int:
        """Free parameters beyond intercepts and slopes (e.g. covariances), over all leaves."""
        return 0

    def zeros(self, L: int, p: int, k: int, m: int, dtype) -> ExpertParams:
        cov = jnp.broadcast_to(jnp.eye(m, dtype=dtype), (L, m, m)) if self.has_cov else None
        return ExpertParams(jnp.zeros((L, k), dtype), jnp.zeros((L, p, k), dtype), cov)

    # -- the predictive distribution (NumPy, float64, on the host; regression families) ----------------------
    def leaf_variance(self, experts: ExpertParams, mu) -> np.ndarray:
        """(n, L, m) per-leaf variance of each output (``experts`` as NumPy arrays)."""
        raise NotImplementedError(f"{self.name!r} experts have no predictive variance")

    def mixture_quantiles(self, experts: ExpertParams, pi, mu, q) -> np.ndarray:
        """(n, m, len(q)) quantiles of the mixture ``Σ_l π_l p(· | μ_l)``."""
        raise NotImplementedError(f"{self.name!r} experts have no predictive quantiles")

    def sample(self, experts: ExpertParams, means, leaf, rng) -> np.ndarray:
        """(n, S, m) draws from the leaves ``leaf`` (n, S) with means ``means`` (n, S, m)."""
        raise NotImplementedError(f"{self.name!r} experts cannot be sampled")

    # -- the unconstrained parameterisation (gradient solvers) and the Bayesian model -------------------------
    def extra_unconstrained(self, spec, experts: ExpertParams, var_floor) -> dict:
        """Unconstrained forms of parameters beyond intercept and slopes (e.g. the covariance)."""
        return {}

    def constrained_cov(self, spec, u: dict, var_floor):
        """The covariance from :meth:`extra_unconstrained`'s values (None for families without one)."""
        return None

    def constrained_df(self, spec, u: dict, dtype):
        """The degrees of freedom from :meth:`extra_unconstrained`'s values (None for families without them)."""
        return None

    def bayes_scale(self, y: np.ndarray) -> tuple[float, float]:
        """(location, scale) of the linear predictor that the default priors centre the intercepts on and scale
        the slopes by (regression: y's mean and sd)."""
        y = np.asarray(y, np.float64)
        if y.ndim == 2 and y.shape[1] > 1:  # one location and scale per output
            sd = y.std(0)
            return y.mean(0), np.where(sd > 0, sd, 1.0)
        return float(y.mean()), float(y.std()) or 1.0

    def bayes_noise(self, spec, scale, priors) -> dict:
        """Sample the family's noise parameters in a numpyro model; return them as ``ExpertParams`` fields
        (``{"cov": ...}``, ``{"cov": ..., "df": ...}``, or ``{}`` for GLM experts)."""
        return {}

    def bayes_likelihood(self, spec, log_pi: jax.Array, eta: jax.Array, experts: ExpertParams):
        """The numpyro distribution of y given log path probabilities (n, L), linear predictors (n, L, k) and the
        experts (for their noise parameters)."""
        raise ValueError(f"Bayesian HMEs are not available for {self.name!r} experts")

    def noise_sites(self, spec, experts: ExpertParams) -> dict:
        """Sample-site values of the noise parameters (the inverse of :meth:`bayes_noise`)."""
        return {}

    def noise_from_sites(self, spec, sample: dict) -> dict:
        """``ExpertParams`` noise fields from sample-site values (the inverse of :meth:`noise_sites`)."""
        return {}


def take_gates(gates: GateParams, idx) -> GateParams:
    """The gates ``idx`` (an index array) of ``gates``."""
    return GateParams(gates.bias[idx], gates.weight[idx], None if gates.cov is None else gates.cov[idx])


__all__ = ["ExpertFamily", "GateFamily", "GateProblem", "take_gates"]
