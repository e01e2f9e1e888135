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

import jax
import jax.numpy as jnp
import numpy as np

from . import capacity
from . import gates as _gates
from . import monitor as _monitor
from ._linalg import weighted_gram
from ._logit import newton_weights
from .aot import compiler_options_for, exported_jit
from .fitting import (
    DEFAULT_ALPHA,
    DEFAULT_GATE_ALPHA,
    EMResult,
    EStep,
    FitData,
    FitOptions,
    Trace,
    best_of,
    center_inputs,
    check_n_candidates,
    e_step,
    healthy,
    iterate,
    keep_where,
    prepare_fit,
    ranks_higher,
    replace_best_run,
)
from .init import content_order, initial_responsibilities, params_from_responsibilities, weighted_draw
from .model import edge_mass
from .params import GateParams, HMEParams, center_params
from .sharding import accepts_mesh
from .spec import ModelSpec

GATE_SOLVERS = ("newton", "bound")

#: emEM (Biernacki, Celeux & Govaert 2003): candidate starts per restart, each run for ``SCREEN_ITER`` EM
#: iterations; the best one starts the full run.
DEFAULT_N_CANDIDATES = 20
SCREEN_ITER = 10
#: Screening runs on at most this many rows (a weight-proportional draw when there are more): its cost stays
#: below ``DEFAULT_N_CANDIDATES · SCREEN_ITER · SCREEN_ROWS / n`` full iterations.
SCREEN_ROWS = 4096
#: Gates whose family re-seeds (Laplace): after the restarts, ``RESEED_STARTS`` starts from the best fit with every
#: such gate's keys re-drawn at data rows that reach the gate (biases 0, experts and other gates kept) run
#: ``RESEED_ITER`` EM iterations; the best runs to convergence and replaces the fit when its objective is higher.
RESEED_STARTS = 8
RESEED_ITER = 30
#: at most this many re-seeding rounds, each from the previous round's winner, while a round improves the fit
RESEED_ROUNDS = 3


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Choices that change the compiled program (static)."""

    max_iter: int = 200
    n_init: int = 1
    init: str = "random"
    gate_solver: str = "newton"
    expert_solver: str = "newton"
    user_init: bool = False
    #: one more restart, from the given ``start_params``, beside the ``n_init`` screened default starts
    extra_start: bool = False
    #: report every iteration to :mod:`hme.monitor` (progress, Ctrl-C) through a host callback
    monitor: bool = False
    #: emEM: candidate starts screened by a short EM run for each restart (1: no screening)
    n_candidates: int = 1


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
    return capacity.keep_active(spec, HMEParams(gates, ex), params)


def em_step(spec: ModelSpec, cfg: FitConfig, params: HMEParams, data: FitData, opts: FitOptions):
    """One EM iteration: returns (objective at ``params``, new params)."""
    st = e_step(spec, params, data, opts)
    return st.objective, m_step(spec, cfg, params, data, st, opts)


def run_em(spec: ModelSpec, cfg: FitConfig, params: HMEParams, data: FitData, opts: FitOptions) -> Trace:
    """The compiled EM loop from one starting point: E-step, then M-step, under :func:`hme.fitting.iterate`."""
    dtype = data.y.dtype

    def step(p):
        st = e_step(spec, p, data, opts)
        return m_step(spec, cfg, p, data, st, opts), st.objective, st.mean_log_likelihood, 1

    r = iterate(step, params, lambda p: p, jnp.asarray(jnp.nan, dtype), max_iter=cfg.max_iter, tol=opts.tol,
                dtype=dtype, report=cfg.monitor)
    return Trace(params=r.params, objective=r.objective, mean_log_likelihood=r.aux, history=r.history,
                 n_iter=r.n_iter, converged=r.converged, failed=r.failed)


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
        start = candidate_start(spec, cfg, key, sub, opts)
        p = jax.lax.fori_loop(0, SCREEN_ITER, lambda _, p: em_step(spec, cfg, p, sub, opts)[1], start)
        obj = e_step(spec, p, sub, opts).objective
        return start, p, jnp.where(jnp.isfinite(obj), obj, -jnp.inf), healthy(spec, p, sub, opts)

    def round_(carry, c):
        best, best_obj, best_ok, first, stop = carry

        def run_round(_):
            start, p, obj, ok = screen(split[:, c])
            better = ranks_higher(obj, ok, best_obj, best_ok)
            first_ = jax.tree_util.tree_map(lambda a, b: jnp.where(c == 1, a, b), start, first)
            return (keep_where(better, p, best), jnp.where(better, obj, best_obj), jnp.where(better, ok, best_ok),
                    first_)

        best, best_obj, best_ok, first = jax.lax.cond(stop, lambda _: (best, best_obj, best_ok, first), run_round,
                                                      None)
        if cfg.monitor:
            stop = stop | jnp.any(_monitor.report(jnp.zeros(best_obj.shape, jnp.int32), best_obj))
        return (best, best_obj, best_ok, first, stop), None

    shape = jax.eval_shape(like, split[:, 1])
    empty = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shape)
    neg_inf = jnp.full(keys.shape[:1], -jnp.inf, data.y.dtype)
    init = (empty, neg_inf, jnp.zeros(neg_inf.shape, bool), empty, jnp.asarray(False))
    (best, best_obj, _, first, _), _ = jax.lax.scan(round_, init, 1 + jnp.arange(cfg.n_candidates))
    # a restart whose candidates all failed keeps its first candidate's unscreened start (one program fewer to
    # compile than drawing a fresh one); EM then reports it as failed, or stops at once
    return keep_where(jnp.isfinite(best_obj), best, first)


def exportable(spec: ModelSpec, cfg) -> bool:
    """Whether a fitting program may be kept on disk (:mod:`hme.aot`): no host callbacks (``cfg.monitor``:
    progress reports), and only hme's own gate and expert families (a family the user registers can change
    while hme's source files, which key the stored programs, do not)."""
    families = [spec.expert_family] + [fam for fam, _ in _gates.gate_groups(spec)]
    return not cfg.monitor and all(type(f).__module__.startswith("hme.") for f in families)


def fit_compiler_options(spec: ModelSpec, X, W=None, **_) -> dict:
    """XLA options of a fitting program on ``X`` (n, p), or on F weightings ``W`` (F, n) of it
    (:func:`hme.aot.compiler_options_for`)."""
    fits = 1 if W is None else W.shape[0]
    return compiler_options_for(X.shape[0] * fits, spec.tree.n_leaves)


def starting_points(spec: ModelSpec, cfg, data: FitData, x_mean, keys, opts: FitOptions, start_params) -> HMEParams:
    """(n_init, ...) starting parameters on the centred inputs: ``start_params`` broadcast, or one screened
    start per key (:func:`screened_starts`); with ``cfg.extra_start``, (1 + n_init, ...): ``start_params``
    first, then the screened starts."""
    if cfg.user_init or cfg.extra_start:
        start_params = capacity.with_absent_neutral(spec, start_params, opts.coef_target)
    if cfg.user_init:
        p0 = center_params(spec, start_params, x_mean, +1.0)
        return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (cfg.n_init,) + a.shape), p0)
    screened = screened_starts(spec, cfg, keys, data, opts)
    if not cfg.extra_start:
        return screened
    p0 = center_params(spec, start_params, x_mean, +1.0)
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None].astype(b.dtype), b]), p0, screened)


@exported_jit(static_argnames=("spec", "cfg"), eligible=exportable, options=fit_compiler_options)
def _fit(spec, cfg, X, y, w, keys, opts, start_params, layout=None):
    with capacity.bind(layout):  # a capacity tree's structure (hme.capacity); None for a TreeSpec
        data, x_mean = center_inputs(spec, X, y, w)
        starts = starting_points(spec, cfg, data, x_mean, keys, opts, start_params)
        traces = jax.vmap(lambda p: run_em(spec, cfg, p, data, opts))(starts)
        return best_of(spec, traces, data, opts, x_mean)


@accepts_mesh
def fit_em(
    spec: ModelSpec,
    X,
    y,
    *,
    sample_weight=None,
    init_params: str = "random",
    start_params: HMEParams | None = None,
    extra_start: HMEParams | None = None,
    n_init: int = 1,
    n_candidates: int = DEFAULT_N_CANDIDATES,
    random_state=0,
    max_iter: int = 200,
    tol: float = 1e-6,
    alpha: float = DEFAULT_ALPHA,
    gate_alpha: float = DEFAULT_GATE_ALPHA,
    var_floor=None,
    coef_target=None,
    coef_scale=None,
    gate_solver: str = "newton",
    expert_solver: str = "newton",
    verbose: int = 0,
    interruptible: bool = True,
    reseed: bool | None = None,
    layout: capacity.Layout | None = None,
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
    extra_start : HMEParams run as one more restart (restart 0) beside the ``n_init`` default (screened) starts,
        in the same compiled program; the best of the ``1 + n_init`` runs wins, e.g. a start assembled from a
        smaller tree checked against fresh starts. Not together with ``start_params``.
    n_init : full EM runs (restarts), vectorised with ``vmap`` over PRNG keys; the best penalised
        log-likelihood among the non-degenerate restarts wins (:func:`healthy`; all degenerate: the best)
    n_candidates : emEM screening: each restart starts from the best of ``n_candidates`` random starts after
        :data:`SCREEN_ITER` EM iterations each (on at most :data:`SCREEN_ROWS` rows); 1 turns screening off
    random_state : int, a ``jax.random`` key, or an array of ``n_init`` keys (one per restart); fixes every
        random choice
    max_iter, tol : at most ``max_iter`` M-steps; stop when |Δ objective| <= tol * max(|objective|, 1)
    alpha : ridge on expert slopes, penalty ``½ Σ_l Σ_j α_j ‖B_lj - T_j‖²`` on the scale of the summed
        log-likelihood (Gaussian experts: ``½ Σ_l tr(S⁻¹ (B_l - T)ᵀ diag(α) (B_l - T))``), default 1e-6; a scalar,
        or one value per expert feature (shape (n_expert_features,)), e.g. α·Var(x_j) for a ridge on the
        standardised scale
    coef_target : (n_expert_features, n_expert_outputs) slopes T the ridge pulls every expert towards (default 0),
        e.g. a pooled single-expert fit, so that experts with little data of their own stay near it
    coef_scale : Gaussian experts only: the fixed noise scale S the ridge is measured in (a positive number, one
        variance per output or an (n_targets, n_targets) covariance; default 1), e.g. the pooled fit's residual
        variance, so that ``α`` counts pseudo-observations for a leaf as noisy as that fit
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
    reseed : re-seed Laplace keys after the fit (trees without Laplace gates: no effect). :data:`RESEED_STARTS`
        short EM runs start from the best fit with the keys re-drawn at data rows (:func:`reseeded_starts`); the
        best runs to convergence and replaces the winning restart when its penalised log-likelihood is higher.
        None (default): on for the default start (with or without ``extra_start``), off when ``start_params``
        is given.
    mesh : data parallelism (:mod:`hme.sharding`): an int (the first k devices), ``"all"``, a list of devices or a
        ``jax.sharding.Mesh``; the rows are split over the devices and the statistics all-reduced, with the same
        answer as one device up to rounding. Default: one device (or the enclosing
        :func:`hme.sharding.data_parallel` context).
    layout : the tree, when ``spec.tree`` is a :class:`hme.capacity.CapacityTree` (:func:`hme.capacity.layout`):
        every binary tree of up to its capacity fits with one compiled program; parameters and per-leaf records
        keep the capacity's shapes (the tree's own are the first rows, :func:`hme.capacity.tree_result`)

    Returns
    -------
    EMResult
    """
    if gate_solver not in GATE_SOLVERS or expert_solver not in GATE_SOLVERS:
        raise ValueError(f"solvers must be one of {GATE_SOLVERS}")
    if (layout is None) != (not isinstance(spec.tree, capacity.CapacityTree)):
        raise ValueError("layout= goes with a spec whose tree is a CapacityTree, and such a spec needs one")
    if start_params is not None and extra_start is not None:
        raise ValueError("give start_params (every restart starts there) or extra_start (one more restart), not both")
    p = prepare_fit(spec, X, y, sample_weight=sample_weight, init_params=init_params,
                    start_params=start_params if extra_start is None else extra_start, n_init=n_init,
                    random_state=random_state, max_iter=max_iter, tol=tol, alpha=alpha,
                    gate_alpha=gate_alpha, var_floor=var_floor, coef_target=coef_target, coef_scale=coef_scale)
    monitored = _monitor.wanted(spec, p.X.shape[0], verbose, interruptible)
    cfg = FitConfig(max_iter=int(max_iter), n_init=int(n_init), init=init_params, gate_solver=gate_solver,
                    expert_solver=expert_solver, user_init=start_params is not None,
                    extra_start=extra_start is not None, monitor=monitored,
                    n_candidates=check_n_candidates(n_candidates))
    def run():
        res = _fit(spec, cfg, p.X, p.y, p.weight, p.keys, p.opts, p.start_params, layout)
        if not (reseed if reseed is not None else not cfg.user_init) or not reseeds(spec, layout):
            return res
        one = dataclasses.replace(cfg, monitor=False, n_init=1)
        for round_ in range(RESEED_ROUNDS):  # again from each new winner, until a round finds nothing better
            key = jax.random.fold_in(jax.random.fold_in(p.keys[0], RESEED_STARTS), round_)
            alt = _reseed_fit(spec, one, p.X, p.y, p.weight, key, p.opts, res.params, layout)
            margin = float(reseed_tie(res.objective)) if np.isfinite(float(res.objective)) else 0.0
            new = replace_best_run(res, alt, margin=margin)
            if new is res:
                break
            res = new
        return res

    return _monitor.launch(run, monitored, max_iter, verbose, "EM", n_init + (extra_start is not None))


def reseed_tie(objective):
    """Objectives closer than this count as equal when re-seeded runs are compared (with each other and with the
    fit they challenge): 1e-9 relative in float64, 100 machine epsilons in float32."""
    dtype = jnp.asarray(objective).dtype
    return jnp.maximum(1e-9, 100 * jnp.finfo(dtype).eps) * jnp.maximum(1.0, jnp.abs(objective))


def reseeds(spec: ModelSpec, layout: capacity.Layout | None = None) -> bool:
    """Whether the fit is followed by re-seeded runs: trees with more than one gate (their leaves can be arranged
    in more than one way; a capacity tree: gates of its ``layout``) and trees with a gate whose family re-seeds its
    weight rows (Laplace keys)."""
    n_gates = spec.tree.n_gates if layout is None else int(np.sum(layout.gate_on))
    return n_gates > 1 or any(fam.reseeds for fam, _ in _gates.gate_groups(spec))


def reseeded_starts(spec: ModelSpec, cfg, params: HMEParams, data: FitData, opts: FitOptions, key, n_starts: int):
    r"""(n_starts, ...) starts built from a fitted ``params`` and its leaf posteriors ``h`` (n, L):

    * **the leaves rearranged**: start s takes the posteriors' columns in a random order π_s (π_0 the identity),
      and gates and experts are fitted to ``h[:, π_s]`` as a random start is fitted to its clustering
      (:func:`hme.init.params_from_responsibilities`): the same experts, placed on other leaves, with gates that
      route to them;
    * **Laplace keys re-drawn**: the keys of every gate whose family re-seeds are then put at data rows, child by
      child, drawn ∝ w_t · (mass of the rearranged posteriors reaching the gate) (weight-exact,
      :func:`hme.init.weighted_draw`), with biases 0.

    Why: EM cannot leave two kinds of stationary point that the start's clusters do not rule out. In a tree of
    several gates, the right experts can sit on the wrong leaves (siblings that should be cousins), and moving an
    expert to another subtree is not a local move. A Laplace gate's objective has local maxima in its keys: with
    one input the logit difference of two children, ``|x - k_1| - |x - k_0| + b``, is a ramp between the keys,
    flat outside them, and a ramp in the wrong place is a stationary point (the gradient in a key is
    ``Σ_t r_t sign(k - x_t)``, which the bias cancels)."""
    st = e_step(spec, params, data, opts)
    w = data.weight
    h = st.leaf_w / jnp.maximum(w, jnp.finfo(w.dtype).tiny)[:, None]
    G, B = params.gates.bias.shape
    L = h.shape[1]
    order_key, key = jax.random.split(key)
    keys = jax.random.split(key, n_starts)
    layout = capacity.active_layout(spec)
    if layout is None:
        perms = jax.vmap(lambda k: jax.random.permutation(k, L))(keys)
    else:  # the present leaves in a random order, the absent ones where they are
        rank = lambda k: jnp.where(layout.leaf_on, jax.random.uniform(k, (L,)), 2.0 + jnp.arange(L))
        perms = jax.vmap(lambda k: jnp.argsort(rank(k)))(keys)
    perms = perms.at[0].set(jnp.arange(L))

    def one(k, perm):
        resp = h[:, perm]
        p = params_from_responsibilities(spec, data.design, data.y, w, resp, opts, cfg.gate_solver,
                                         cfg.expert_solver)
        node_w = jnp.sum(edge_mass(spec, resp * w[:, None]), -1)  # (n, G)
        gates = p.gates
        for fam, idx in _gates.gate_groups(spec):
            if not fam.reseeds:
                continue
            D = _gates.family_design(spec, fam, data.design.gate)
            order = content_order(order_key, D)
            gids = jnp.arange(G) if idx is None else jnp.asarray(idx)
            rows = jax.vmap(lambda kk, g, order=order: weighted_draw(kk, order, node_w[:, g], (B,)))(
                jax.random.split(k, gids.shape[0]), gids)  # (n_gates of the family, B)
            gates = GateParams(gates.bias.at[gids].set(0.0), gates.weight.at[gids].set(D[rows]), gates.cov)
        return capacity.keep_active(spec, HMEParams(gates, p.experts), p)

    return jax.lax.map(lambda kp: one(*kp), (keys, perms))  # one after another: memory of one start


@exported_jit(static_argnames=("spec", "cfg"), eligible=exportable, options=fit_compiler_options)
def _reseed_fit(spec, cfg, X, y, w, key, opts, params, layout=None):
    with capacity.bind(layout):
        return _reseed_fit_body(spec, cfg, X, y, w, key, opts, params)


def _reseed_fit_body(spec, cfg, X, y, w, key, opts, params):
    """From a fit's ``params`` (raw inputs): :data:`RESEED_STARTS` re-seeded starts (:func:`reseeded_starts`) each
    run :data:`RESEED_ITER` EM iterations on all rows (the experts are fitted already: a rearrangement or a key
    that finds its ramp shows at once), and the best of them (healthy first) runs EM to convergence. Returns that
    run as a one-restart result, or one with objective -inf (nothing better) when no gate re-draws keys and the
    identity arrangement (start 0) wins the short runs."""
    data, x_mean = center_inputs(spec, X, y, w)
    starts = reseeded_starts(spec, cfg, center_params(spec, params, x_mean, +1.0), data, opts, key, RESEED_STARTS)

    def short_run(p):
        p = jax.lax.fori_loop(0, RESEED_ITER, lambda _, p: em_step(spec, cfg, p, data, opts)[1], p)
        obj = e_step(spec, p, data, opts).objective
        return p, jnp.where(jnp.isfinite(obj), obj, -jnp.inf), healthy(spec, p, data, opts)

    # one start after another: peak memory is one run's (n, L) arrays, not RESEED_STARTS of them (on a CPU the
    # rows already fill the cores, so vmap would gain little speed for its RESEED_STARTS-fold memory)
    ran, obj, ok = jax.lax.map(short_run, starts)
    rank = jnp.where(ok, obj, jnp.where(jnp.isfinite(obj), -jnp.finfo(obj.dtype).max, -jnp.inf))
    # the first start within roundoff of the best: equivalent trees (siblings swapped) tie, and the choice among
    # them must not depend on roundoff (integer weights must fit as repeated rows do)
    top = jnp.max(rank)
    first = jnp.argmax(rank >= top - reseed_tie(top))
    best = jax.tree_util.tree_map(lambda a: a[first][None], ran)
    full = lambda b: jax.vmap(lambda p: run_em(spec, cfg, p, data, opts))(b)
    if any(fam.reseeds for fam, _ in _gates.gate_groups(spec)):
        traces = full(best)
    else:
        # Without keys to re-draw, start 0 (the identity arrangement) is the fit itself refitted to its own
        # posteriors: when it wins, no rearrangement beat continuing EM, and its full run would only extend the
        # fit (up to max_iter more iterations when the fit stopped unconverged). Skip it: -inf never replaces.
        def nothing_better(b):
            shapes = jax.eval_shape(full, b)
            fill = lambda s, v: jnp.full(s.shape, v, s.dtype)
            return shapes._replace(
                params=b, objective=fill(shapes.objective, -jnp.inf),
                mean_log_likelihood=fill(shapes.mean_log_likelihood, jnp.nan),
                history=fill(shapes.history, jnp.nan), n_iter=fill(shapes.n_iter, 0),
                converged=fill(shapes.converged, False), failed=fill(shapes.failed, True))

        traces = jax.lax.cond(first == 0, nothing_better, full, best)
    return best_of(spec, traces, data, opts, x_mean)


@exported_jit(static_argnames=("spec", "cfg"), eligible=exportable, options=fit_compiler_options)
def _fit_each_weighting(spec, cfg, X, y, W, keys, opts):
    return jax.vmap(lambda w, k: _fit(spec, cfg, X, y, w, k, opts, None))(W, keys)


def fit_em_weightings(
    spec: ModelSpec,
    X,
    y,
    weights,
    *,
    n_init: int = 1,
    n_candidates: int = DEFAULT_N_CANDIDATES,
    random_state=0,
    max_iter: int = 200,
    tol: float = 1e-6,
    alpha=DEFAULT_ALPHA,
    gate_alpha=DEFAULT_GATE_ALPHA,
    var_floor=None,
    coef_target=None,
    coef_scale=None,
    gate_solver: str = "newton",
) -> EMResult:
    """F independent EM fits of one model to the same rows under F sample weightings, ``weights`` (F, n), run
    under one ``vmap`` in one compiled program (e.g. the candidate splits of every leaf of a growing tree, each
    fitted to its leaf's posterior-weighted rows). Each fit is :func:`fit_em` with ``sample_weight=weights[f]``
    and the default emEM start; the result's arrays carry a leading axis F. ``var_floor`` is relative to the
    unweighted variance of each output."""
    if gate_solver not in GATE_SOLVERS:
        raise ValueError(f"gate_solver must be one of {GATE_SOLVERS}")
    W = np.asarray(weights, np.float64)
    n = np.shape(X)[0] if np.ndim(X) == 2 else -1
    if W.ndim != 2 or W.shape[1] != n or W.shape[0] < 1:
        raise ValueError(f"weights must have shape (n_fits, n_samples={n}), got {W.shape}")
    if not np.all(np.isfinite(W)) or np.any(W < 0) or not np.all(W.sum(axis=1) > 0):
        raise ValueError("every weighting must be finite and non-negative with a positive sum")
    p = prepare_fit(spec, X, y, n_init=n_init, random_state=random_state, max_iter=max_iter, tol=tol, alpha=alpha,
                    gate_alpha=gate_alpha, var_floor=var_floor, coef_target=coef_target, coef_scale=coef_scale)
    F = W.shape[0]
    W = jnp.asarray(np.pad(W, ((0, 0), (0, p.X.shape[0] - n))), p.X.dtype)
    keys = jax.vmap(lambda k: jax.random.split(k, int(n_init)))(jax.random.split(p.keys[0], F))
    cfg = FitConfig(max_iter=int(max_iter), n_init=int(n_init), gate_solver=gate_solver,
                    n_candidates=check_n_candidates(n_candidates))
    return _fit_each_weighting(spec, cfg, p.X, p.y, W, keys, p.opts)
