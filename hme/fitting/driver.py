r"""One compiled iterate loop for every fitting engine.

An engine supplies ``step(carry) -> (new_carry, objective, aux, evaluations)``: the objective (and ``aux``, e.g.
the mean log-likelihood) belong to the *current* carry, ``new_carry`` is the next iterate. The loop stops at
iteration k when

.. math::  |f_k - f_{k-1}| ≤ \mathrm{tol} · \max(|f_{k-1}|, 1)

(relative to the objective, or absolute in nats per sample once the objective is below 1 in size: a classifier
that fits well has an objective near 0, where a purely relative test never stops), when the objective turns
non-finite, after ``max_iter`` steps, or when a monitored fit is asked to stop (Ctrl-C). It keeps the last
parameters whose objective was finite, so no NaN leaves a fit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .. import monitor
from ..pytrees import tree_where


class IterateState(NamedTuple):
    carry: Any  # the engine's state (EM: parameters; gradient: unconstrained parameters, optimiser state, key)
    good: Any  # parameters of the last iterate with a finite objective
    aux: Any  # the engine's per-iterate extra, at the last finite iterate
    k: jax.Array  # iterations done
    evals: jax.Array  # objective (and gradient) evaluations
    prev: jax.Array  # last finite objective
    hist: jax.Array  # (max_iter + 1,) objective per iteration, NaN after the last
    done: jax.Array
    converged: jax.Array
    failed: jax.Array


class IterateResult(NamedTuple):
    params: Any  # the final parameters (the last finite ones when the objective turned non-finite)
    carry: Any
    objective: jax.Array
    aux: Any
    history: jax.Array
    n_iter: jax.Array
    n_evaluations: jax.Array
    converged: jax.Array
    failed: jax.Array


def iterate(
    step: Callable,
    carry0,
    params_of: Callable,
    aux0,
    *,
    max_iter: int,
    tol: jax.Array,
    dtype,
    report: bool = False,
) -> IterateResult:
    """Run ``step`` under ``lax.while_loop`` until the stopping rule above; ``params_of(carry)`` is the part of
    the carry kept when an objective turns non-finite. ``report`` sends every iteration to :mod:`hme.monitor`."""

    def cond(s: IterateState):
        return ~s.done

    def body(s: IterateState) -> IterateState:
        new_carry, obj, aux, evals = step(s.carry)
        finite = jnp.isfinite(obj)
        rel = jnp.abs(obj - s.prev) / jnp.maximum(jnp.abs(s.prev), 1.0)
        converged = (s.k > 0) & finite & (rel <= tol)
        done = converged | ~finite | (s.k >= max_iter)
        if report:  # a stop request (Ctrl-C) ends the loop like reaching max_iter
            done = done | monitor.report(s.k, obj)
        return IterateState(
            carry=tree_where(done, s.carry, new_carry),
            good=tree_where(finite, params_of(s.carry), s.good),
            aux=tree_where(finite, aux, s.aux),
            k=jnp.where(done, s.k, s.k + 1),
            evals=s.evals + jnp.where(done, 0, evals),
            prev=jnp.where(finite, obj, s.prev),
            hist=s.hist.at[s.k].set(obj),
            done=done,
            converged=converged,
            failed=~finite,
        )

    s0 = IterateState(
        carry=carry0,
        good=params_of(carry0),
        aux=aux0,
        k=jnp.asarray(0),
        evals=jnp.asarray(0),
        prev=jnp.asarray(-jnp.inf, dtype),
        hist=jnp.full((max_iter + 1,), jnp.nan, dtype),
        done=jnp.asarray(False),
        converged=jnp.asarray(False),
        failed=jnp.asarray(False),
    )
    s = jax.lax.while_loop(cond, body, s0)
    params = tree_where(s.failed, s.good, params_of(s.carry))
    return IterateResult(params=params, carry=s.carry, objective=s.prev, aux=s.aux, history=s.hist, n_iter=s.k,
                         n_evaluations=s.evals, converged=s.converged, failed=s.failed)
