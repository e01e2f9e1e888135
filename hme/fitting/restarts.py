r"""Restarts: judging each run's end point, and picking the winner.

Every engine runs its restarts under one ``vmap`` and hands back a :class:`Trace` per restart (leading axis R).
:func:`best_of` ranks them, healthy first (no empty leaf, no Gaussian expert on its variance floor; a degenerate
fit's likelihood can grow without bound), then by objective, and returns an :class:`EMResult` with the winner's
parameters on the raw (uncentred) inputs and every restart's record.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import batched_linalg, capacity
from ..params import HMEParams, center_params
from ..spec import ModelSpec
from .objective import e_step
from .problem import FitData, FitOptions


class Trace(NamedTuple):
    """One run's end: final parameters (centred inputs), objective, mean log-likelihood and record."""

    params: HMEParams
    objective: jax.Array
    mean_log_likelihood: jax.Array
    history: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    failed: jax.Array
    n_eval: jax.Array | None = None  # objective+gradient evaluations (gradient fits); EM: one per iteration


class EMResult(NamedTuple):
    """Result of :func:`hme.fit_em` and :func:`hme.fit_gradient`.

    params : HMEParams -- best restart, on the original (uncentred) inputs
    objective : mean penalised log-likelihood of ``params`` (what the fit increases)
    log_likelihood : total (weighted) log-likelihood Σ_t w_t log p(y_t | x_t) of ``params``
    history : (max_iter + 1,) penalised mean log-likelihood per iteration, NaN after the last
    n_iter, converged : iterations done; whether the relative change fell below ``tol``
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


def leaf_health(spec: ModelSpec, params: HMEParams, data: FitData, opts: FitOptions) -> tuple[jax.Array, jax.Array]:
    """Per-leaf posterior sample counts (L,) and variance-floor flags (L,) of one run's final parameters."""
    st = e_step(spec, params, data, opts)
    n_rows = jnp.sum(data.weight > 0)  # padding rows carry zero weight
    count = jnp.sum(st.leaf_w, axis=0) * (n_rows / jnp.sum(data.weight))
    layout = capacity.active_layout(spec)
    if layout is not None:  # absent leaves of a capacity tree are neither empty nor collapsed
        count = jnp.where(layout.leaf_on, count, jnp.inf)
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
    collapsed = gap > 1e-6 * jnp.maximum(scale, 1.0)
    return count, collapsed if layout is None else collapsed & layout.leaf_on


def healthy(spec: ModelSpec, params: HMEParams, data: FitData, opts: FitOptions) -> jax.Array:
    """Whether no leaf is empty (posterior count < 1 sample) and no Gaussian expert's covariance sits on the floor:
    the estimators' definition of a non-degenerate fit."""
    count, collapsed = leaf_health(spec, params, data, opts)
    return ~(jnp.any(count < 1.0) | jnp.any(collapsed))


def ranks_higher(obj, ok, other_obj, other_ok) -> jax.Array:
    """Fits compare healthy first, then by objective: a degenerate fit's likelihood can grow without bound (an
    expert interpolating a few points), so it never displaces a healthy one."""
    return (ok & ~other_ok) | ((ok == other_ok) & (obj > other_obj))


def keep_where(flag: jax.Array, a, b):
    """Per restart: ``a`` where ``flag`` (R,) holds, else ``b`` (pytrees with a leading restart axis)."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(flag.reshape(flag.shape + (1,) * (x.ndim - 1)), x, y), a, b)


def best_of(spec: ModelSpec, traces: Trace, data: FitData, opts: FitOptions, x_mean: jax.Array) -> EMResult:
    """The best restart's parameters (back on the raw inputs) with every restart's record."""
    score = jnp.where(traces.failed | ~jnp.isfinite(traces.objective), -jnp.inf, traces.objective)
    leaf_count, collapsed = jax.vmap(lambda p: leaf_health(spec, p, data, opts))(traces.params)
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


def replace_best_run(res: EMResult, alt: EMResult, margin: float = 0.0) -> EMResult:
    """``res`` with its winning restart replaced by ``alt``'s winner when that ranks higher (:func:`ranks_higher`:
    healthy first, then an objective higher by more than ``margin``), e.g. a run from re-seeded starts. The
    returned parameters and record are then ``alt``'s best run's, and so is the winning restart's entry in every
    ``restart_*`` array, so the record stays that of ``n_init`` runs with the winner among them."""
    b, a = int(res.best_restart), int(alt.best_restart)

    def health(r, i):
        count, collapsed = np.asarray(r.restart_leaf_count)[i], np.asarray(r.restart_collapsed)[i]
        return bool(np.all(count >= 1.0) and not np.any(collapsed))

    obj, alt_obj = float(res.objective), float(alt.objective)
    if not np.isfinite(alt_obj) or not bool(ranks_higher(alt_obj, health(alt, a), obj + margin, health(res, b))):
        return res
    at = lambda r_all, a_all: jnp.asarray(r_all).at[b].set(jnp.asarray(a_all)[a])
    return res._replace(
        params=alt.params, objective=alt.objective, log_likelihood=alt.log_likelihood, history=alt.history,
        n_iter=alt.n_iter, converged=alt.converged, n_evaluations=alt.n_evaluations,
        restart_objective=at(res.restart_objective, alt.restart_objective),
        restart_history=at(res.restart_history, alt.restart_history),
        restart_n_iter=at(res.restart_n_iter, alt.restart_n_iter),
        restart_converged=at(res.restart_converged, alt.restart_converged),
        restart_failed=at(res.restart_failed, alt.restart_failed),
        restart_leaf_count=at(res.restart_leaf_count, alt.restart_leaf_count),
        restart_collapsed=at(res.restart_collapsed, alt.restart_collapsed),
    )
