r"""The penalised log-likelihood every engine maximises, and the posteriors at a point (the E-step).

For parameters θ, rows t with weights w_t and a ridge penalty R(θ) (each family's own),

.. math::  f(θ) = \Big[\sum_t w_t \log p(y_t \mid x_t; θ) + \sum_t w_t \log p(x_t; θ) - R(θ)\Big] \Big/ \sum_t w_t,

where the input term enters only for gates that model the inputs (Gaussian gates, whose EM maximises the joint
likelihood of (x, y)). EM increases f by its M-steps, the gradient solvers by gradient steps; minibatches use the
unbiased batch estimate of :func:`batch_objective`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import gates as _gates
from ..model import Design, joint
from ..params import HMEParams
from ..spec import ModelSpec
from .problem import FitData, FitOptions


def penalty(spec: ModelSpec, params: HMEParams, opts: FitOptions) -> jax.Array:
    """Gate and expert ridges R(θ) (each family's own), on the scale of the summed log-likelihood."""
    gate_pen = _gates.penalty(spec, params.gates, opts.gate_alpha)
    return gate_pen + spec.expert_family.penalty(spec, params.experts, opts.alpha, opts.coef_target,
                                                 opts.coef_scale)


def _input_log_lik(spec: ModelSpec, params: HMEParams, design: Design, w: jax.Array) -> jax.Array:
    """Σ_t w_t log p(x_t; θ) for gates that model the inputs, else 0."""
    if not _gates.models_inputs(spec):
        return jnp.zeros((), w.dtype)
    return jnp.sum(w * _gates.log_marginal(spec, design.gate, params.gates))


class EStep(NamedTuple):
    objective: jax.Array  # f(θ): penalised mean log-likelihood (joint in (x, y) for Gaussian gates)
    mean_log_likelihood: jax.Array  # conditional: Σ_t w_t log p(y_t | x_t) / Σ_t w_t
    leaf_w: jax.Array  # (n, L) leaf posteriors h_tl times sample weights w_t
    gate_log_prob: jax.Array  # (n, G, B) log gate probabilities
    aux: object  # the expert family's per-row extra (e.g. Gaussian residual terms)


def e_step(spec: ModelSpec, params: HMEParams, data: FitData, opts: FitOptions) -> EStep:
    """f(θ), the mean log-likelihood and the weighted leaf posteriors at ``params`` (one pass over the data)."""
    j = joint(spec, params, data.design, data.y)
    w = data.weight
    total = jnp.sum(w)
    ll = jnp.sum(w * j.log_lik)
    joint_ll = ll + _input_log_lik(spec, params, data.design, w)
    obj = (joint_ll - penalty(spec, params, opts)) / total
    return EStep(objective=obj, mean_log_likelihood=ll / total, leaf_w=j.leaf_post * w[:, None],
                 gate_log_prob=j.gate_log_prob, aux=j.aux)


def batch_objective(spec: ModelSpec, params: HMEParams, design: Design, y, w, total, opts: FitOptions) -> jax.Array:
    """f(θ) estimated on a batch of rows: ``(Σ_b w log p - (Σ_b w / total) R(θ)) / Σ_b w``; on all rows
    (Σ_b w = total) it equals :func:`e_step`'s objective."""
    ll = jnp.sum(w * joint(spec, params, design, y).log_lik) + _input_log_lik(spec, params, design, w)
    wb = jnp.sum(w)
    safe = jnp.maximum(wb, jnp.finfo(w.dtype).tiny)
    return (ll - (wb / total) * penalty(spec, params, opts)) / safe
