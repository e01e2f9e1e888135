"""Parameter pytrees of an HME (NamedTuples: jit/vmap friendly, picklable after ``jax.device_get``)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .spec import ModelSpec


class GateParams(NamedTuple):
    """All gates of the tree, stacked in level order.

    bias : array of shape (n_gates, max_branching)
        ``b_{g,c}``; child 0 of every gate is the reference (bias 0).
    weight : array of shape (n_gates, max_branching, n_gate_features)
        Softmax: slopes ``w_{g,c}`` (``w_{g,0} = 0``). Laplace: keys ``W_{g,c}`` in input space.
        Gaussian: means ``c_{g,c}`` in input space.
    cov : array of shape (n_gates, max_branching, n_gate_features, n_gate_features), or None
        Gaussian gates only: covariances ``Γ_{g,c}``; ``bias`` then holds ``log π_{g,c}``.
    """

    bias: jax.Array
    weight: jax.Array
    cov: jax.Array | None = None


class ExpertParams(NamedTuple):
    """All leaves, left to right.

    intercept : array of shape (n_leaves, k)
    coef : array of shape (n_leaves, n_expert_features, k)
        ``k`` = n_outputs (Gaussian, Poisson) or n_classes - 1 (categorical; class 0 is the reference).
    cov : array of shape (n_leaves, n_outputs, n_outputs), or None for GLM experts
        Gaussian noise covariance (identical copies when shared); Student-t experts: the scale matrix.
    df : array of shape (n_leaves,), or None
        Student-t experts: degrees of freedom ν_l.
    """

    intercept: jax.Array
    coef: jax.Array
    cov: jax.Array | None = None
    df: jax.Array | None = None


class HMEParams(NamedTuple):
    gates: GateParams
    experts: ExpertParams


def zeros_params(spec: ModelSpec, dtype=jnp.float32) -> HMEParams:
    """Parameters of the right shapes: gates uniform, experts zero, unit covariance."""
    from . import gates as tree_gates

    t = spec.tree
    experts = spec.expert_family.zeros(t.n_leaves, spec.n_expert_features, spec.n_expert_outputs, spec.n_targets,
                                       dtype)
    return HMEParams(tree_gates.zeros(spec, dtype), experts)


def check_params(spec: ModelSpec, params: HMEParams) -> None:
    """Raise ``ValueError`` when the shapes of ``params`` do not fit ``spec``."""
    ref = zeros_params(spec)
    got = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), params)
    want = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), ref)
    if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(want) or got != want:
        raise ValueError(f"parameter shapes {got} do not match the model specification {want}")


def cast_params(params: HMEParams, dtype) -> HMEParams:
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)


def center_params(spec: ModelSpec, params: HMEParams, x_mean: jax.Array, sign: float = 1.0) -> HMEParams:
    """Re-express ``params`` for inputs shifted by ``x_mean`` (sign=+1: to centred inputs; -1: back).

    Centering is an exact reparametrisation: ``w·x + b = w·(x - m) + (b + w·m)`` for softmax gates and
    linear predictors, ``‖W - x‖ = ‖(W - m) - (x - m)‖`` for Laplace keys (and Gaussian-gate means).
    """
    from . import gates as tree_gates

    g, e = params
    mg = x_mean if spec.gate_features is None else x_mean[jnp.asarray(spec.gate_features, int)]
    me = x_mean if spec.expert_features is None else x_mean[jnp.asarray(spec.expert_features, int)]
    g = tree_gates.shift(spec, g, mg, sign)
    e = e._replace(intercept=e.intercept + sign * jnp.einsum("lpk,p->lk", e.coef, me))
    return HMEParams(g, e)
