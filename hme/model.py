r"""The HME as a function of its parameters: designs, gate path probabilities, likelihoods, posteriors.

For a tree with gates g and leaves l, the gate path probability of leaf l is the product of the gate
probabilities on its root-to-leaf path, ``π_l(x) = Π_{(g,c) ∈ path(l)} g_{g,c}(x)``, and

.. math::  p(y | x) = Σ_l π_l(x) \, P_l(y | x),   \qquad
           h_l = π_l P_l / p(y | x)  \text{(leaf posterior)}.

Edge (node) posteriors are sums of leaf posteriors below the edge. In log space, with the edge->leaf
incidence matrix ``A`` of :class:`hme.tree.TreeSpec`: ``log π = log_gates @ A`` and ``h_edge = h @ Aᵀ``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import capacity, code_space, compile_cache
from . import gates as _gates
from .params import HMEParams
from .spec import ModelSpec


class Design(NamedTuple):
    """Design matrices. ``expert`` = [1, X_e] (n, 1 + p_e); ``gate`` = [1, X_g] (softmax) or X_g (Laplace)."""

    expert: jax.Array
    gate: jax.Array


class ExpertBox(NamedTuple):
    """Per-leaf input ranges of the experts, ``lo``, ``hi`` of shape (L, p_e) (expert features only)."""

    lo: jax.Array
    hi: jax.Array


def make_design(spec: ModelSpec, X: jax.Array, expert_box: ExpertBox | None = None) -> Design:
    """Designs of the rows of X. With ``expert_box`` the expert design is (n, L, 1 + p_e): leaf l sees
    ``[1, clip(x_e, lo_l, hi_l)]`` (prediction only; fits use the shared (n, 1 + p_e) design)."""
    n = X.shape[0]
    ones = jnp.ones((n, 1), X.dtype)
    Xe = X if spec.expert_features is None else X[:, jnp.asarray(spec.expert_features, int)]
    De = jnp.concatenate([ones, Xe.reshape(n, -1)], axis=1)
    if expert_box is not None:
        lo, hi = (jnp.asarray(a, X.dtype) for a in expert_box)
        Xb = jnp.clip(Xe.reshape(n, 1, -1), lo[None], hi[None])  # (n, L, p_e)
        De_box = jnp.concatenate([jnp.ones(Xb.shape[:2] + (1,), X.dtype), Xb], axis=2)
        Dg = De if spec.shares_design else None
        if Dg is None:
            Xg = (X if spec.gate_features is None else X[:, jnp.asarray(spec.gate_features, int)]).reshape(n, -1)
            Dg = jnp.concatenate([ones, Xg], axis=1) if spec.gate_design_has_intercept else Xg
        return Design(De_box, Dg)
    if spec.shares_design:
        return Design(De, De)
    Xg = X if spec.gate_features is None else X[:, jnp.asarray(spec.gate_features, int)]
    Xg = Xg.reshape(n, -1)
    Dg = jnp.concatenate([ones, Xg], axis=1) if spec.gate_design_has_intercept else Xg
    return Design(De, Dg)


def _edge_leaf(spec, dtype):
    return jnp.asarray(spec.tree.edge_leaf, dtype)


def log_path_from_gates(spec: ModelSpec, gate_log_prob: jax.Array) -> jax.Array:
    """(n, G, B) log gate probabilities -> (n, L) log path probabilities, one matmul (a capacity tree's: its
    bound layout's, with -∞ for absent leaves, :mod:`hme.capacity`)."""
    layout = capacity.active_layout(spec)
    if layout is not None:
        return capacity.mask_log_path(layout, gate_log_prob)
    n = gate_log_prob.shape[0]
    return gate_log_prob.reshape(n, -1) @ _edge_leaf(spec, gate_log_prob.dtype)


def edge_mass(spec: ModelSpec, leaf_mass: jax.Array) -> jax.Array:
    """(n, L) leaf posteriors -> (n, G, B) posterior mass through every edge."""
    t = spec.tree
    n = leaf_mass.shape[0]
    return (leaf_mass @ _edge_leaf(spec, leaf_mass.dtype).T).reshape(n, t.n_gates, t.max_branching)


class Joint(NamedTuple):
    gate_log_prob: jax.Array  # (n, G, B)
    log_path: jax.Array  # (n, L)
    leaf_log_lik: jax.Array  # (n, L)
    log_lik: jax.Array  # (n,)
    leaf_post: jax.Array  # (n, L) posterior leaf probabilities h_l
    aux: object  # family-specific cache for the M-step


def joint(spec: ModelSpec, params: HMEParams, design: Design, y: jax.Array) -> Joint:
    """Everything the E-step needs. log p(y|x) and the leaf posteriors share one set of exponentials:
    with ``a = log π + log P`` and ``m = max_l a``: ``log p = m + log Σ e^{a-m}``, ``h = e^{a-m} / Σ e^{a-m}``."""
    glp = _gates.gate_log_probs(spec, design.gate, params.gates)
    log_path = log_path_from_gates(spec, glp)
    leaf_ll, aux = spec.expert_family.log_prob(spec, params.experts, design.expert, y)
    a = log_path + leaf_ll
    layout = capacity.active_layout(spec)
    if layout is not None:  # an absent leaf's own log-likelihood is never read
        a = jnp.where(layout.leaf_on[None], a, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(a, axis=1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(a - m)
    s = jnp.sum(e, axis=1, keepdims=True)
    log_lik = (m + jnp.log(s))[:, 0]
    return Joint(glp, log_path, leaf_ll, log_lik, e / s, aux)


# -- public functional API on raw inputs -----------------------------------------------------------------


def prepare_targets(spec: ModelSpec, y: jax.Array, dtype) -> jax.Array:
    """Targets as the experts take them: (n, C) one-hot (or soft) labels for categorical experts, else (n, m)."""
    return spec.expert_family.prepare_targets(jnp.asarray(y), spec.n_targets, dtype)


def _bucketed(fn):
    """Pad the rows of X (and y) to a size bucket before calling a jitted function, then slice: predictions
    on data sets of nearby sizes reuse one compiled program."""

    @functools.wraps(fn)
    def wrapper(spec, params, X, *rest, expert_box=None):
        from ._linalg import padded_length
        from .sharding import padded_rows, place_rows

        compile_cache.enable_default()

        code_space.ensure_code_space()
        X = jnp.asarray(X)
        n = X.shape[0]
        pad = padded_rows(n, padded_length(n)) - n
        if pad:
            X = jnp.pad(X, ((0, pad), (0, 0)))
            rest = tuple(jnp.pad(jnp.asarray(r), ((0, pad),) + ((0, 0),) * (jnp.ndim(r) - 1)) for r in rest)
        X, *rest = place_rows(X, *(jnp.asarray(r) for r in rest))  # hme.sharding: rows over the devices
        if expert_box is not None:
            expert_box = ExpertBox(*(jnp.asarray(a) for a in expert_box))
        out = fn(spec, params, X, *rest, expert_box=expert_box)
        return jax.tree_util.tree_map(lambda a: a[:n], out)

    return wrapper


@_bucketed
@functools.partial(jax.jit, static_argnums=0)
def gate_path_probs(spec: ModelSpec, params: HMEParams, X: jax.Array, expert_box=None) -> jax.Array:
    """Prior probability of reaching each leaf, π_l(x): array of shape (n_samples, n_leaves), rows sum to 1.
    (``expert_box`` is accepted for a uniform signature; gates never use it.)"""
    X = jnp.asarray(X)
    d = make_design(spec, X)
    return jnp.exp(log_path_from_gates(spec, _gates.gate_log_probs(spec, d.gate, params.gates)))


@_bucketed
@functools.partial(jax.jit, static_argnums=0)
def log_likelihood(spec: ModelSpec, params: HMEParams, X: jax.Array, y: jax.Array, expert_box=None) -> jax.Array:
    """Per-sample conditional log-density log p(y_t | x_t), shape (n_samples,). With ``expert_box``
    (:class:`ExpertBox`) each expert sees its inputs clipped to its own box."""
    X = jnp.asarray(X)
    return joint(spec, params, make_design(spec, X, expert_box), prepare_targets(spec, y, X.dtype)).log_lik


@_bucketed
@functools.partial(jax.jit, static_argnums=0)
def posteriors(spec: ModelSpec, params: HMEParams, X: jax.Array, y: jax.Array, expert_box=None) -> dict:
    """Posterior probabilities given (x, y).

    Returns a dict with ``leaf`` (n, L) = h_l, ``edge`` (n, G, B) = posterior of passing through each gate's
    child, ``node`` (n, G) = posterior of reaching each gate, and ``conditional`` (n, G, B) = h_{c|g}, the
    gate's soft targets (posterior of child c given that gate g is reached).
    """
    X = jnp.asarray(X)
    j = joint(spec, params, make_design(spec, X, expert_box), prepare_targets(spec, y, X.dtype))
    leaf = j.leaf_post
    edge = edge_mass(spec, leaf)
    mask = jnp.asarray(spec.tree.child_mask)
    node = jnp.sum(edge, -1)
    cond = jnp.where(mask[None], edge / jnp.maximum(node[..., None], jnp.finfo(X.dtype).tiny), 0.0)
    return {"leaf": leaf, "edge": edge, "node": node, "conditional": cond}


@_bucketed
@functools.partial(jax.jit, static_argnums=0)
def leaf_means(spec: ModelSpec, params: HMEParams, X: jax.Array, expert_box=None) -> jax.Array:
    """Per-leaf predictive means (class probabilities for categorical experts), (n, L, k)."""
    X = jnp.asarray(X)
    return spec.expert_family.mean(spec, params.experts, make_design(spec, X, expert_box).expert)


@_bucketed
@functools.partial(jax.jit, static_argnums=0)
def predict_mean(spec: ModelSpec, params: HMEParams, X: jax.Array, expert_box=None) -> jax.Array:
    """Predictive mean E[y | x] = Σ_l π_l(x) μ_l(x): (n, n_outputs); class probabilities for categorical."""
    X = jnp.asarray(X)
    d = make_design(spec, X, expert_box)
    pi = jnp.exp(log_path_from_gates(spec, _gates.gate_log_probs(spec, d.gate, params.gates)))
    return jnp.einsum("nl,nlk->nk", pi, spec.expert_family.mean(spec, params.experts, d.expert))


def predict_log_proba(spec: ModelSpec, params: HMEParams, X: jax.Array, expert_box=None) -> jax.Array:
    """Log class probabilities log p(y = c | x) = logsumexp_l(log π_l(x) + log p_l(c | x)), (n, n_classes).

    Computed in log space, so a saturated leaf gives a finite log-probability instead of log 0; categorical
    experts only. Rows are normalised in the model's dtype; see :func:`predict_proba` for exact sums."""
    if spec.expert_family.task != "classification":
        raise ValueError(f"predict_log_proba needs classification experts, not {spec.expert!r}")
    return _predict_log_proba(spec, params, X, expert_box=expert_box)


@_bucketed
@functools.partial(jax.jit, static_argnums=0)
def _predict_log_proba(spec, params, X, expert_box=None):
    X = jnp.asarray(X)
    d = make_design(spec, X, expert_box)
    log_pi = log_path_from_gates(spec, _gates.gate_log_probs(spec, d.gate, params.gates))  # (n, L)
    log_leaf = spec.expert_family.log_mean(spec, params.experts, d.expert)  # (n, L, C)
    lp = jax.nn.logsumexp(log_pi[..., None] + log_leaf, axis=1)
    return lp - jax.nn.logsumexp(lp, axis=1, keepdims=True)


def predict_proba(spec: ModelSpec, params: HMEParams, X: jax.Array, expert_box=None) -> np.ndarray:
    """Class probabilities p(y = c | x) as float64 NumPy, (n, n_classes); categorical experts only.

    The log-probabilities of :func:`predict_log_proba` are renormalised and exponentiated in float64 whatever
    the model's dtype, so every entry lies in [0, 1] and every row sums to 1 within a few float64 ulps."""
    lp = np.asarray(predict_log_proba(spec, params, X, expert_box), np.float64)
    lp = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)
    p = np.exp(lp)
    return p / p.sum(axis=1, keepdims=True)


#: A training row belongs to an expert's box when its posterior for that leaf is at least this.
BOX_POSTERIOR = 0.5
BOX_GATE_WEIGHT = 0.01


def expert_boxes(spec: ModelSpec, leaf_post, leaf_gate, X, sample_weight=None) -> ExpertBox:
    """The input range of the training rows each expert takes part in, for clipping its inputs at prediction.

    Leaf l's box spans the expert features of the rows (of positive weight) that it explains,
    ``h_tl ≥ BOX_POSTERIOR``, or that its path weight brings into the predicted mean, ``g_tl ≥ BOX_GATE_WEIGHT``.
    Inside the training data the clipped model is then the fitted model up to ``BOX_GATE_WEIGHT`` times the gap
    between an expert's clipped and unclipped answers. A leaf with no such row gets the rows where it has the
    largest posterior, and failing that the whole training range. NumPy in, NumPy out: ``leaf_post`` and
    ``leaf_gate`` (n, L); ``lo``, ``hi`` of shape (L, p_e)."""
    X = np.asarray(X, np.float64)
    Xe = X if spec.expert_features is None else X[:, list(spec.expert_features)]
    h = np.asarray(leaf_post, np.float64)
    g = np.asarray(leaf_gate, np.float64)
    ok = np.ones(len(X), bool) if sample_weight is None else np.asarray(sample_weight) > 0
    L, p = h.shape[1], Xe.shape[1]
    lo, hi = np.empty((L, p)), np.empty((L, p))
    top = np.argmax(h, axis=1)
    for l in range(L):
        rows = ok & ((h[:, l] >= BOX_POSTERIOR) | (g[:, l] >= BOX_GATE_WEIGHT))
        if not rows.any():
            rows = ok & (top == l)
        if not rows.any():
            rows = ok
        lo[l], hi[l] = Xe[rows].min(axis=0), Xe[rows].max(axis=0)
    return ExpertBox(lo, hi)
