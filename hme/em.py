r"""EM for hierarchical mixtures of experts (Jordan & Jacobs 1994), compiled end to end.

One iteration:

* **E-step** (log space): log gate probabilities of all gates in one batched op, log path probabilities by the
  edge->leaf incidence matmul, per-leaf log-likelihoods, ``log p(y|x) = logsumexp_l(log π_l + log P_l)``,
  leaf posteriors ``h_l``, and edge/node posteriors ``h @ Aᵀ`` (the downward/upward passes as matmuls).
* **M-step**: all experts in one batched solve (closed-form weighted least squares for Gaussian experts; one
  warm-started IRLS step with halving for GLM experts) and all gates in one batched Newton step with halving
  (soft targets = edge posteriors, case weights = node posteriors). Every part of the M-step increases its part
  of the expected complete-data log-likelihood, so the penalised log-likelihood never decreases (GEM).

The loop is a ``lax.while_loop`` that stops when the relative change of the penalised mean log-likelihood
falls below ``tol`` or after ``max_iter`` M-steps, and records a NaN-padded history. Restarts run under one
``vmap`` over PRNG keys; the best final objective wins.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import batched_linalg, code_space
from . import gates as _gates
from . import monitor as _monitor
from ._linalg import padded_length, weighted_gram
from ._logit import newton_weights
from .fitting import iterate
from .init import INIT_METHODS, content_order, initial_responsibilities, params_from_responsibilities, weighted_draw
from .model import Design, edge_mass, joint, make_design
from .params import HMEParams, cast_params, center_params, check_params
from .spec import ModelSpec

GATE_SOLVERS = ("newton", "bound")

#: Default ridge on gate coefficients (penalty ½ α Σ θ², on the scale of the summed log-likelihood).
DEFAULT_GATE_ALPHA = 1e-4
#: Default ridge on expert slopes (intercepts are not penalised).
DEFAULT_ALPHA = 1e-6
#: Default variance floor, relative to the (weighted) variance of each output.
DEFAULT_VAR_FLOOR = 1e-6
#: emEM (Biernacki, Celeux & Govaert 2003): candidate starts per restart, each run for ``SCREEN_ITER`` EM
#: iterations; the best one starts the full run.
DEFAULT_N_CANDIDATES = 20
SCREEN_ITER = 10
#: Screening runs on at most this many rows (a weight-proportional draw when there are more): its cost stays
#: below ``DEFAULT_N_CANDIDATES · SCREEN_ITER · SCREEN_ROWS / n`` full iterations.
SCREEN_ROWS = 4096


class FitOptions(NamedTuple):
    """Numeric hyperparameters, traced (changing them does not recompile)."""

    tol: jax.Array
    alpha: jax.Array  # () or (q,): ridge on expert coefficients per design column (column 0, the intercept, free)
    gate_alpha: jax.Array
    var_floor: jax.Array  # (n_outputs,)
    coef_target: jax.Array | None = None  # (p_e, k): the expert slopes the ridge pulls towards (default 0)


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Choices that change the compiled program (static)."""

    max_iter: int = 200
    n_init: int = 1
    init: str = "random"
    gate_solver: str = "newton"
    expert_solver: str = "newton"
    user_init: bool = False
    #: report every iteration to :mod:`hme.monitor` (progress, Ctrl-C) through a host callback
    monitor: bool = False
    #: emEM: candidate starts screened by a short EM run for each restart (1: no screening)
    n_candidates: int = 1


class FitData(NamedTuple):
    design: Design
    y: jax.Array
    weight: jax.Array


class EMTrace(NamedTuple):
    params: HMEParams
    objective: jax.Array
    mean_log_likelihood: jax.Array
    history: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    failed: jax.Array
    n_eval: jax.Array | None = (
        None  # objective+gradient evaluations (gradient fits); EM: one E- and M-step per iteration
    )


class EMResult(NamedTuple):
    """Result of :func:`fit_em`.

    params : HMEParams -- best restart, on the original (uncentred) inputs
    objective : mean penalised log-likelihood of ``params`` (what EM increases)
    log_likelihood : total (weighted) log-likelihood Σ_t w_t log p(y_t | x_t) of ``params``
    history : (max_iter + 1,) penalised mean log-likelihood per iteration, NaN after the last
    n_iter, converged : M-steps done; whether the relative change fell below ``tol``
    best_restart : index of the winning restart
    restart_objective, restart_history, restart_n_iter, restart_converged, restart_failed : the same per restart
    restart_leaf_count : (n_init, n_leaves) posterior sample count of each leaf at each restart's final
        parameters, n₊ Σ_t w_t h_tl / Σ_t w_t with n₊ the rows of positive weight (count < 1: empty)
    restart_collapsed : (n_init, n_leaves) whether a Gaussian expert's covariance sits on ``var_floor``
        (all False for other families)
    n_evaluations : passes over the data of the best restart: EM iterations, or objective-and-gradient
        evaluations of a gradient fit (line-search steps included; minibatch: epochs + full evaluations)
    """

    params: HMEParams
    objective: jax.Array
    log_likelihood: jax.Array
    history: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    best_restart: jax.Array
    restart_objective: jax.Array
    restart_history: jax.Array
    restart_n_iter: jax.Array
    restart_converged: jax.Array
    restart_failed: jax.Array
    restart_leaf_count: jax.Array
    restart_collapsed: jax.Array
    n_evaluations: jax.Array | None = None


def penalty(spec: ModelSpec, params: HMEParams, opts: FitOptions) -> jax.Array:
    """Gate and expert ridges (each family's own), on the scale of the summed log-likelihood."""
    gate_pen = _gates.penalty(spec, params.gates, opts.gate_alpha)
    return gate_pen + spec.expert_family.penalty(spec, params.experts, opts.alpha, opts.coef_target)


class EStep(NamedTuple):
    objective: jax.Array  # penalised mean log-likelihood (joint in (x, y) for Gaussian gates)
    mean_log_likelihood: jax.Array  # conditional: mean log p(y | x)
    leaf_w: jax.Array  # (n, L) leaf posteriors x sample weights
    gate_log_prob: jax.Array
    aux: object


def e_step(spec: ModelSpec, params: HMEParams, data: FitData, opts: FitOptions) -> EStep:
    j = joint(spec, params, data.design, data.y)
    w = data.weight
    total = jnp.sum(w)
    ll = jnp.sum(w * j.log_lik)
    leaf_w = j.leaf_post * w[:, None]
    joint_ll = ll
    if _gates.models_inputs(spec):  # EM maximises the joint likelihood of (x, y)
        joint_ll = ll + jnp.sum(w * _gates.log_marginal(spec, data.design.gate, params.gates))
    obj = (joint_ll - penalty(spec, params, opts)) / total
    return EStep(obj, ll / total, leaf_w, j.gate_log_prob, j.aux)


def m_step(spec: ModelSpec, cfg: FitConfig, params: HMEParams, data: FitData, st: EStep, opts: FitOptions) -> HMEParams:
    fam = spec.expert_family
    De, Dg = data.design
    needs_leaf_gram = fam.needs_gram(cfg.expert_solver) or (spec.shares_design and cfg.gate_solver == "bound")
    edge_w = edge_mass(spec, st.leaf_w)
    node_w = jnp.sum(edge_w, -1)
    hessian_gram = None
    gram_gates = _gates.uses_node_gram(spec)
    if needs_leaf_gram and spec.shares_design and gram_gates and cfg.gate_solver == "newton":
        # One streaming pass over the design for the experts' Grams and the gates' exact Hessians.
        hw = newton_weights(st.gate_log_prob, node_w, spec.tree.child_mask)
        L = st.leaf_w.shape[1]
        grams = weighted_gram(De, jnp.concatenate([st.leaf_w, hw], axis=1))
        leaf_gram, hessian_gram = grams[:L], grams[L:]
    else:
        leaf_gram = weighted_gram(De, st.leaf_w) if needs_leaf_gram else None
    node_gram = None
    if cfg.gate_solver == "bound" and gram_gates:
        if spec.shares_design:
            # node posterior = sum of leaf posteriors below it, so node Grams are subtree sums of leaf Grams
            node_gram = jnp.einsum("gl,lij->gij", jnp.asarray(spec.tree.gate_leaf, De.dtype), leaf_gram)
        else:
            node_gram = weighted_gram(Dg, node_w)
    gates = _gates.m_step(
        spec,
        params.gates,
        Dg,
        st.gate_log_prob,
        edge_w,
        node_w,
        opts.gate_alpha,
        cfg.gate_solver,
        node_gram,
        hessian_gram,
    )
    ex = fam.m_step(spec, params.experts, De, data.y, st.leaf_w, st.aux, leaf_gram, opts, solver=cfg.expert_solver)
    return HMEParams(gates, ex)


def em_step(spec: ModelSpec, cfg: FitConfig, params: HMEParams, data: FitData, opts: FitOptions):
    """One EM iteration: returns (objective at ``params``, new params)."""
    st = e_step(spec, params, data, opts)
    return st.objective, m_step(spec, cfg, params, data, st, opts)


def run_em(spec: ModelSpec, cfg: FitConfig, params: HMEParams, data: FitData, opts: FitOptions) -> EMTrace:
    """The compiled EM loop from one starting point: E-step, then M-step, under :func:`hme.fitting.iterate`."""
    dtype = data.y.dtype

    def step(p):
        st = e_step(spec, p, data, opts)
        return m_step(spec, cfg, p, data, st, opts), st.objective, st.mean_log_likelihood, 1

    r = iterate(step, params, lambda p: p, jnp.asarray(jnp.nan, dtype), max_iter=cfg.max_iter, tol=opts.tol,
                dtype=dtype, report=cfg.monitor)
    return EMTrace(r.params, r.objective, r.aux, r.history, r.n_iter, r.converged, r.failed)


def _weighted_mean(X, w):
    return (w @ X) / jnp.sum(w)


def center_inputs(spec: ModelSpec, X, y, w):
    """Centre X at its weighted mean (an exact reparametrisation) and build the design: (FitData, x_mean)."""
    x_mean = _weighted_mean(X, w) if X.shape[1] else jnp.zeros((0,), X.dtype)
    return FitData(make_design(spec, X - x_mean), y, w), x_mean


def candidate_start(spec: ModelSpec, cfg, key, data: FitData, opts: FitOptions) -> HMEParams:
    """One random start: clustering responsibilities (``cfg.init``), then gates and experts fitted to them."""
    resp = initial_responsibilities(spec, cfg.init, key, data.design, data.y, data.weight)
    return params_from_responsibilities(spec, data.design, data.y, data.weight, resp, opts, cfg.gate_solver,
                                        cfg.expert_solver)


def screening_rows(key, data: FitData, max_rows: int) -> FitData:
    """At most ``max_rows`` rows drawn with replacement ∝ weight (weight-exact, :func:`hme.init.weighted_draw`),
    each of weight 1; all of ``data`` when it has no more rows."""
    n = data.y.shape[0]
    if n <= max_rows:
        return data
    order_key, key = jax.random.split(key)
    content = jnp.concatenate([data.design.expert, data.design.gate, data.y], axis=1)
    idx = weighted_draw(key, content_order(order_key, content), data.weight, (max_rows,))
    take = lambda a: a[idx]
    return FitData(jax.tree_util.tree_map(take, data.design), data.y[idx], jnp.ones((max_rows,), data.weight.dtype))


def screened_starts(spec: ModelSpec, cfg, keys, data: FitData, opts: FitOptions) -> HMEParams:
    """emEM, one start per key (R keys): ``cfg.n_candidates`` random starts per restart, each run for
    ``SCREEN_ITER`` EM iterations on (at most ``SCREEN_ROWS``) rows; each restart keeps the candidate with the
    highest penalised log-likelihood after its short run. Returns (R, ...) parameters.

    Candidates run one after another (``lax.scan``; the R restarts of a candidate round together under ``vmap``),
    so memory is that of one short run per restart. A monitored fit reports after every round, and a stop request
    (Ctrl-C) skips the remaining rounds."""
    if cfg.n_candidates <= 1:
        return jax.vmap(lambda key: candidate_start(spec, cfg, key, data, opts))(keys)
    split = jax.vmap(lambda key: jax.random.split(key, cfg.n_candidates + 1))(keys)  # (R, C + 1, 2)
    if data.y.shape[0] > SCREEN_ROWS:  # one weight-proportional subsample per restart
        subs = jax.vmap(lambda key: screening_rows(key, data, SCREEN_ROWS))(split[:, 0])
        screen = lambda ks: jax.vmap(short_run)(ks, subs)
        like = lambda ks: jax.vmap(lambda a, b: candidate_start(spec, cfg, a, b, opts))(ks, subs)
    else:  # all rows, shared by the restarts: the same arithmetic as a single restart (n_init=1)
        screen = lambda ks: jax.vmap(lambda k: short_run(k, data))(ks)
        like = lambda ks: jax.vmap(lambda k: candidate_start(spec, cfg, k, data, opts))(ks)

    def short_run(key, sub):
        p = candidate_start(spec, cfg, key, sub, opts)
        p = jax.lax.fori_loop(0, SCREEN_ITER, lambda _, p: em_step(spec, cfg, p, sub, opts)[1], p)
        obj = e_step(spec, p, sub, opts).objective
        return p, jnp.where(jnp.isfinite(obj), obj, -jnp.inf), healthy(spec, p, sub, opts)

    def round_(carry, c):
        best, best_obj, best_ok, stop = carry

        def run_round(_):
            p, obj, ok = screen(split[:, c])
            better = ranks_higher(obj, ok, best_obj, best_ok)
            return _keep(better, p, best), jnp.where(better, obj, best_obj), jnp.where(better, ok, best_ok)

        best, best_obj, best_ok = jax.lax.cond(stop, lambda _: (best, best_obj, best_ok), run_round, None)
        if cfg.monitor:
            stop = stop | jnp.any(_monitor.report(jnp.zeros(best_obj.shape, jnp.int32), best_obj))
        return (best, best_obj, best_ok, stop), None

    shape = jax.eval_shape(like, split[:, 1])
    empty = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shape)
    neg_inf = jnp.full(keys.shape[:1], -jnp.inf, data.y.dtype)
    init = (empty, neg_inf, jnp.zeros(neg_inf.shape, bool), jnp.asarray(False))
    (best, best_obj, _, _), _ = jax.lax.scan(round_, init, 1 + jnp.arange(cfg.n_candidates))
    # a restart whose candidates all failed (or that a stop request left empty) gets an unscreened start; EM then
    # reports it as failed, or stops at once
    plain = jax.vmap(lambda key: candidate_start(spec, cfg, key, data, opts))(split[:, 0])
    return _keep(jnp.isfinite(best_obj), best, plain)


def healthy(spec: ModelSpec, params: HMEParams, data: FitData, opts: FitOptions) -> jax.Array:
    """Whether no leaf is empty (posterior count < 1 sample) and no Gaussian expert's covariance sits on the floor:
    the estimators' definition of a non-degenerate fit."""
    count, collapsed = _leaf_health(spec, params, data, opts)
    return ~(jnp.any(count < 1.0) | jnp.any(collapsed))


def ranks_higher(obj, ok, other_obj, other_ok) -> jax.Array:
    """Fits compare healthy first, then by objective: a degenerate fit's likelihood can grow without bound (an
    expert interpolating a few points), so it never displaces a healthy one."""
    return (ok & ~other_ok) | ((ok == other_ok) & (obj > other_obj))


def _keep(flag, a, b):
    """Per restart: ``a`` where ``flag`` (R,) holds, else ``b`` (pytrees with a leading restart axis)."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(flag.reshape(flag.shape + (1,) * (x.ndim - 1)), x, y), a, b)


def starting_points(spec: ModelSpec, cfg, data: FitData, x_mean, keys, opts: FitOptions, start_params) -> HMEParams:
    """(n_init, ...) starting parameters on the centred inputs: ``start_params`` broadcast, or one screened
    start per key (:func:`screened_starts`)."""
    if cfg.user_init:
        p0 = center_params(spec, start_params, x_mean, +1.0)
        return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (cfg.n_init,) + a.shape), p0)
    return screened_starts(spec, cfg, keys, data, opts)


def best_of(spec: ModelSpec, traces: EMTrace, data: FitData, opts: FitOptions, x_mean) -> EMResult:
    """The best restart's parameters (back on the raw inputs) with every restart's record."""
    score = jnp.where(traces.failed | ~jnp.isfinite(traces.objective), -jnp.inf, traces.objective)
    leaf_count, collapsed = jax.vmap(lambda p: _leaf_health(spec, p, data, opts))(traces.params)
    ok = ~(jnp.any(leaf_count < 1.0, axis=1) | jnp.any(collapsed, axis=1))
    # healthy restarts first (see ranks_higher), then the highest objective
    best = jnp.argmax(jnp.where(jnp.any(ok & jnp.isfinite(score)) & ~ok, -jnp.inf, score))
    params = jax.tree_util.tree_map(lambda a: a[best], traces.params)
    params = center_params(spec, params, x_mean, -1.0)
    return EMResult(
        params=params,
        objective=traces.objective[best],
        log_likelihood=traces.mean_log_likelihood[best] * jnp.sum(data.weight),
        history=traces.history[best],
        n_iter=traces.n_iter[best],
        converged=traces.converged[best],
        best_restart=best,
        restart_objective=traces.objective,
        restart_history=traces.history,
        restart_n_iter=traces.n_iter,
        restart_converged=traces.converged,
        restart_failed=traces.failed,
        restart_leaf_count=leaf_count,
        restart_collapsed=collapsed,
        n_evaluations=(traces.n_iter if traces.n_eval is None else traces.n_eval)[best],
    )


@jax.jit(static_argnames=("spec", "cfg"))
def _fit(spec, cfg, X, y, w, keys, opts, start_params):
    data, x_mean = center_inputs(spec, X, y, w)
    starts = starting_points(spec, cfg, data, x_mean, keys, opts, start_params)
    traces = jax.vmap(lambda p: run_em(spec, cfg, p, data, opts))(starts)
    return best_of(spec, traces, data, opts, x_mean)


def _leaf_health(spec, params, data, opts):
    """Per-leaf posterior sample counts and variance-floor flags of one restart's final parameters."""
    st = e_step(spec, params, data, opts)
    n_rows = jnp.sum(data.weight > 0)  # padding rows carry zero weight
    count = jnp.sum(st.leaf_w, axis=0) * (n_rows / jnp.sum(data.weight))
    cov = params.experts.cov
    if not spec.expert_family.has_cov or cov is None:
        return count, jnp.zeros(count.shape, bool)
    s = jnp.sqrt(opts.var_floor)
    scaled = cov / (s[:, None] * s[None, :])
    # λ_min(S) ≤ t  ⇔  S - tI has a non-positive eigenvalue  ⇔  tr(|S - tI| - (S - tI)) = 2 Σ max(t - λ, 0) > 0
    t = 1.0 + 1e-3
    shifted = scaled - t * jnp.eye(scaled.shape[-1], dtype=scaled.dtype)
    gap = jnp.trace(batched_linalg.matrix_abs(shifted) - shifted, axis1=-2, axis2=-1)
    scale = jnp.sqrt(jnp.sum(shifted * shifted, axis=(-2, -1)))
    return count, gap > 1e-6 * jnp.maximum(scale, 1.0)


def _check_finite(name, a):
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinity")


def fit_em(
    spec: ModelSpec,
    X,
    y,
    *,
    sample_weight=None,
    init_params: str = "random",
    start_params: HMEParams | None = None,
    n_init: int = 1,
    n_candidates: int = DEFAULT_N_CANDIDATES,
    random_state=0,
    max_iter: int = 200,
    tol: float = 1e-6,
    alpha: float = DEFAULT_ALPHA,
    gate_alpha: float = DEFAULT_GATE_ALPHA,
    var_floor=None,
    coef_target=None,
    gate_solver: str = "newton",
    expert_solver: str = "newton",
    verbose: int = 0,
    interruptible: bool = True,
) -> EMResult:
    r"""Fit an HME by EM.

    Parameters
    ----------
    spec : ModelSpec
    X : array of shape (n_samples, n_features); float32 or float64 (the fit follows this dtype; float64 needs
        ``jax_enable_x64``)
    y : Gaussian/Poisson: (n_samples,) or (n_samples, n_outputs); categorical: integer labels 0..C-1 of shape
        (n_samples,) or one-hot / soft labels (n_samples, C)
    sample_weight : (n_samples,) non-negative frequency weights, default all ones
    init_params : {"kmeans", "kmeans_xy", "random"}, how random starts are drawn (:mod:`hme.init`; the estimators'
        ``init_params``); ignored when ``start_params`` is given
    start_params : HMEParams to start from (then every restart starts there)
    n_init : full EM runs (restarts), vectorised with ``vmap`` over PRNG keys; the best penalised
        log-likelihood among the non-degenerate restarts wins (:func:`healthy`; all degenerate: the best)
    n_candidates : emEM screening: each restart starts from the best of ``n_candidates`` random starts after
        :data:`SCREEN_ITER` EM iterations each (on at most :data:`SCREEN_ROWS` rows); 1 turns screening off
    random_state : int, a ``jax.random`` key, or an array of ``n_init`` keys (one per restart); fixes every
        random choice
    max_iter, tol : at most ``max_iter`` M-steps; stop when |Δ objective| <= tol * max(|objective|, 1)
    alpha : ridge on expert slopes (Gaussian experts: penalty ``α/2 tr(Σ⁻¹ (B - T)ᵀ(B - T))``), default 1e-6; a
        scalar, or one value per expert feature (shape (n_expert_features,)), e.g. α·Var(x_j) for a ridge on the
        standardised scale
    coef_target : (n_expert_features, n_expert_outputs) slopes T the ridge pulls every expert towards (default 0),
        e.g. a pooled single-expert fit, so that experts with little data of their own stay near it
    gate_alpha : ridge on gate coefficients (softmax: slopes and biases; Laplace: biases), default 1e-4; for
        softmax gates also a vector ``[α_bias, α_1, ..., α_p]`` (e.g. γ·[1, Var(x_1), ...] for a ridge on the
        standardised scale)
    var_floor : floor on expert variances relative to the (weighted) variance of each output, scalar or per
        output (the estimators' ``var_floor``, one meaning in both layers); default 1e-6
    gate_solver : "newton" (exact IRLS Hessian) or "bound" (Böhning's curvature bound; no extra data pass)
    expert_solver : "newton" or "bound", for categorical experts
    verbose : > 0 shows a progress bar (iteration, best objective, restarts) from the start; otherwise it appears
        only once the fit has run for :data:`hme.monitor.QUIET_SECONDS`
    interruptible : for fits whose iterations are expensive (:func:`hme.monitor.worth_monitoring`), report to the
        host every iteration (progress; Ctrl-C stops the compiled loop within one iteration and raises
        ``KeyboardInterrupt`` with nothing left running). False always compiles the bare loop.

    Returns
    -------
    EMResult
    """
    if gate_solver not in GATE_SOLVERS or expert_solver not in GATE_SOLVERS:
        raise ValueError(f"solvers must be one of {GATE_SOLVERS}")
    p = prepare_fit(spec, X, y, sample_weight, init_params, start_params, n_init, random_state, max_iter, tol, alpha,
                    gate_alpha, var_floor, coef_target)
    monitored = _monitor.wanted(spec, p.X.shape[0], verbose, interruptible)
    cfg = FitConfig(max_iter=int(max_iter), n_init=int(n_init), init=init_params, gate_solver=gate_solver,
                    expert_solver=expert_solver, user_init=p.user_init, monitor=monitored,
                    n_candidates=check_n_candidates(n_candidates))
    return _monitor.launch(lambda: _fit(spec, cfg, p.X, p.y, p.weight, p.keys, p.opts, p.start_params), monitored,
                           max_iter, verbose, "EM", n_init)


def check_n_candidates(n_candidates) -> int:
    if not (isinstance(n_candidates, (int, np.integer)) and not isinstance(n_candidates, bool) and n_candidates >= 1):
        raise ValueError(f"n_candidates must be a positive integer, got {n_candidates!r}")
    return int(n_candidates)


class Prepared(NamedTuple):
    """Validated, padded inputs of a fit: rows beyond n carry zero weight."""

    X: jax.Array
    y: jax.Array
    weight: jax.Array
    keys: jax.Array
    opts: FitOptions
    start_params: HMEParams | None
    user_init: bool


def prepare_fit(spec, X, y, sample_weight, init_params, start_params, n_init, random_state, max_iter, tol, alpha,
                gate_alpha, var_floor, coef_target=None) -> Prepared:
    """Shared validation of :func:`fit_em` and :func:`hme.fit_gradient` (clear errors, never a JAX traceback)."""
    code_space.ensure_code_space()
    if init_params not in INIT_METHODS:
        raise ValueError(f"init_params must be one of {INIT_METHODS}, got {init_params!r}")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (isinstance(n_init, (int, np.integer)) and n_init >= 1):
        raise ValueError(f"n_init must be a positive integer, got {n_init!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    a = np.asarray(alpha, np.float64)
    ga = np.asarray(gate_alpha, np.float64)
    if not (np.all(a >= 0) and np.all(np.isfinite(a)) and np.all(ga >= 0) and np.all(np.isfinite(ga))):
        raise ValueError("alpha and gate_alpha must be finite and >= 0")
    if ga.ndim > 1 or (ga.ndim == 1 and (not _gates.uses_node_gram(spec) or ga.shape[0] != spec.n_gate_features + 1)):
        raise ValueError("gate_alpha must be a scalar, or (softmax gates) one value for the biases followed by one "
                         f"per gate feature ({spec.n_gate_features + 1} in all); got shape {ga.shape} for "
                         f"{spec.gate!r} gates")
    gate_alpha = ga
    p_e = spec.n_expert_features
    if a.ndim > 1 or (a.ndim == 1 and a.shape[0] != p_e):
        raise ValueError(f"alpha must be a scalar or have one value per expert feature ({p_e}), got shape {a.shape}")
    alpha = a if a.ndim == 0 else np.concatenate([[0.0], a])  # per design column; the intercept is free
    if coef_target is not None:
        coef_target = np.asarray(coef_target, np.float64)
        if coef_target.shape != (p_e, spec.n_expert_outputs) or not np.all(np.isfinite(coef_target)):
            raise ValueError(f"coef_target must be finite with shape ({p_e}, {spec.n_expert_outputs}), got "
                             f"{coef_target.shape}")
    X = jnp.asarray(X)
    if not jnp.issubdtype(X.dtype, jnp.floating):
        X = X.astype(jnp.float32 if not jax.config.jax_enable_x64 else jnp.float64)
    dtype = X.dtype
    if X.ndim != 2 or X.shape[1] != spec.n_features:
        raise ValueError(f"X must have shape (n_samples, {spec.n_features}), got {X.shape}")
    n = X.shape[0]
    from .model import prepare_targets

    y = prepare_targets(spec, y, dtype)
    if y.shape[0] != n:
        raise ValueError(f"X has {n} samples but y has {y.shape[0]}")
    k = spec.n_targets
    if y.shape[1] != k:
        raise ValueError(f"y must have {k} columns (n_targets) for this spec, got {y.shape[1]}")
    w = jnp.ones((n,), dtype) if sample_weight is None else jnp.asarray(sample_weight, dtype).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"sample_weight has {w.shape[0]} entries for {n} samples")
    _check_finite("X", np.asarray(X))
    _check_finite("y", np.asarray(y))
    _check_finite("sample_weight", np.asarray(w))
    if np.any(np.asarray(w) < 0) or not np.sum(np.asarray(w)) > 0:
        raise ValueError("sample_weight must be non-negative with a positive sum")
    n_used = int(np.count_nonzero(np.asarray(w)))
    if n_used < spec.tree.n_leaves:
        raise ValueError(
            f"n_samples={n_used} (with positive weight) should be >= the tree's {spec.tree.n_leaves} leaves: every "
            "expert needs data. Use a smaller tree (depth, branching) or more samples."
        )
    spec.expert_family.check_targets(y)
    relative = np.asarray(DEFAULT_VAR_FLOOR if var_floor is None else var_floor, np.float64)
    if not (np.all(np.isfinite(relative)) and np.all(relative > 0)):
        raise ValueError(f"var_floor must be finite and > 0 (a fraction of each output's variance), got {var_floor!r}")
    wn = np.asarray(w, np.float64)
    yn = np.asarray(y, np.float64)
    var = wn @ (yn - wn @ yn / wn.sum()) ** 2 / wn.sum()
    floor = relative * np.where(var > 0, var, 1.0)  # absolute: a fraction of each output's (weighted) variance
    vf = jnp.broadcast_to(jnp.asarray(floor, dtype), (spec.n_targets if spec.expert_family.has_cov else k,))
    opts = FitOptions(tol=jnp.asarray(tol, dtype), alpha=jnp.asarray(alpha, dtype),
                      gate_alpha=jnp.asarray(gate_alpha, dtype), var_floor=vf,
                      coef_target=None if coef_target is None else jnp.asarray(coef_target, dtype))
    if isinstance(random_state, (int, np.integer)):
        keys = jax.random.split(jax.random.PRNGKey(int(random_state)), n_init)
    else:
        key = jnp.asarray(random_state)
        if key.ndim == 2:  # one key per restart
            if key.shape[0] != n_init:
                raise ValueError(f"got {key.shape[0]} keys for n_init={n_init}")
            keys = key
        else:
            keys = jax.random.split(key, n_init)
    user = start_params is not None
    if user:
        check_params(spec, start_params)
        start_params = cast_params(start_params, dtype)
    pad = padded_length(n) - n
    if pad:  # zero-weight rows: nearby sample sizes reuse one compiled program
        X = jnp.pad(X, ((0, pad), (0, 0)))
        y = jnp.pad(y, ((0, pad), (0, 0)))
        w = jnp.pad(w, (0, pad))
    return Prepared(X, y, w, keys, opts, start_params, user)
