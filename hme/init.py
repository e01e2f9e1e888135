r"""Starting points for EM: responsibilities from clustering, then one M-step-like fit of gates and experts.

Methods (all vectorisable over PRNG keys, so ``n_init`` restarts run under one ``vmap``):

* ``"kmeans"`` -- k-means++ seeding and Lloyd iterations on the standardised gate inputs (falls back to
  ``"kmeans_xy"`` for intercept-only gates, where inputs carry no information about the leaf);
* ``"kmeans_xy"`` -- the same on standardised (expert inputs, y): separates crossing regression lines;
* ``"random"`` -- n_leaves distinct random data points (on (x, y)) as centres, hard nearest-centre assignment.

Every random choice of a row is *weight-exact*: rows are ordered by their projection on a random direction
(identical rows are neighbours in that order) and a row is drawn by inverting the cumulative weight. So a row of
integer weight k is drawn exactly as often as k repeated copies of it, and a fit with ``sample_weight`` starts
where the fit of the repeated data starts (:func:`weighted_draw`).

Clusters are placed on leaves so that siblings are close: at every gate the clusters of its subtree are sorted
along their first principal axis and dealt out to the children in order (a tree-shaped bisection). Experts are
then fitted to the hard responsibilities and gates to smoothed ones (targets 0.9 hard + 0.1 uniform, so the
initial gates stay soft).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import batched_linalg, capacity
from . import gates as _gates
from ._linalg import weighted_gram
from .model import edge_mass
from .params import HMEParams, zeros_params

INIT_METHODS = ("kmeans", "kmeans_xy", "random")
_LLOYD_ITERS = 25
_INIT_NEWTON_STEPS = 8


def _standardize(F, w):
    W = jnp.sum(w)
    mu = (w @ F) / W
    var = (w @ (F - mu) ** 2) / W
    sd = jnp.sqrt(jnp.where(var > 0, var, 1.0))
    return (F - mu) / sd


def _sq_dist(F, C):
    return jnp.maximum(jnp.sum(F**2, 1)[:, None] - 2 * F @ C.T + jnp.sum(C**2, 1)[None], 0.0)


def content_order(key, F: jax.Array) -> jax.Array:
    """(n,) row order by projection of the rows of ``F`` on a random direction: identical rows sort together."""
    direction = jax.random.normal(key, (F.shape[1],), F.dtype)
    return jnp.argsort(F @ direction, stable=True)


def weighted_draw(key, order: jax.Array, p: jax.Array, shape=()) -> jax.Array:
    """Row indices drawn with probability ∝ ``p`` (n,) (unnormalised, >= 0; not all 0) by inverting the cumulative
    mass along ``order``: u ~ U(0, Σp), the first row in ``order`` whose cumulative mass exceeds u.

    Drawing from a row of weight k equals drawing from k adjacent copies of it, so the draw depends on the
    weighted data set, not on how it is written down."""
    cum = jnp.cumsum(p[order])
    u = jax.random.uniform(key, shape, cum.dtype) * cum[-1]
    pos = jnp.minimum(jnp.searchsorted(cum, u, side="right"), order.shape[0] - 1)
    return order[pos]


def _seed_centres(key, F, w, k, power):
    """k centres drawn from the rows: the first ∝ w, then each ∝ w·D(x)^power with D the distance to the nearest
    centre so far (power 2: k-means++; power 0: uniformly among rows unlike the centres so far)."""
    order_key, key = jax.random.split(key)
    order = content_order(order_key, F)
    keys = jax.random.split(key, k)
    first = F[weighted_draw(keys[0], order, w)]
    C = jnp.zeros((k, F.shape[1]), F.dtype).at[0].set(first)

    # the squared distance to the nearest centre so far, updated with each new centre by direct differences: a
    # row equal to a centre is at exactly 0 however the rows are blocked or split over devices (the expansion
    # |x|² - 2 x·c + |c|² leaves roundoff there, which would decide whether the row can be drawn again)
    def body(i, carry):
        C, d2 = carry
        p = w * (d2 if power == 2 else (d2 > 0).astype(F.dtype))
        p = jnp.where(jnp.sum(p) > 0, p, w)
        c = F[weighted_draw(keys[i], order, p)]
        return C.at[i].set(c), jnp.minimum(d2, jnp.sum((F - c) ** 2, axis=1))

    C, _ = jax.lax.fori_loop(1, k, body, (C, jnp.sum((F - first) ** 2, axis=1)))
    return C


def _nearest(F, C, on=None):
    """(n,) index of the nearest centre (among the centres ``on`` (k,) bool, when given)."""
    d2 = _sq_dist(F, C)
    return jnp.argmin(d2 if on is None else jnp.where(on[None], d2, jnp.inf), axis=1)


def _lloyd(F, w, C, on=None):
    k = C.shape[0]

    def body(_, C):
        assign = _nearest(F, C, on)
        onehot = jax.nn.one_hot(assign, k, dtype=F.dtype) * w[:, None]
        counts = jnp.sum(onehot, 0)
        newC = (onehot.T @ F) / jnp.maximum(counts, jnp.finfo(F.dtype).tiny)[:, None]
        return jnp.where(counts[:, None] > 0, newC, C)

    return jax.lax.fori_loop(0, _LLOYD_ITERS, body, C)


def _leaf_count(node):
    return 1 if node == () else sum(_leaf_count(c) for c in node)


def _place_clusters(structure, C):
    """perm[l] = cluster placed on leaf l. Unrolled once at trace time over the (static) gates; it only
    touches the (n_leaves, f) centre matrix, never the samples."""

    def rec(node, idx):
        if node == ():
            return [idx[0]]
        sub = C[idx]
        sub = sub - jnp.mean(sub, 0)
        # projections on the leading principal axis of the centred centres ∝ the leading eigenvector of sub subᵀ
        order = idx[jnp.argsort(batched_linalg.leading_eigenvector(sub @ sub.T))]
        out, start = [], 0
        for child in node:
            k = _leaf_count(child)
            out += rec(child, order[start : start + k])
            start += k
        return out

    return jnp.stack(rec(structure, jnp.arange(C.shape[0])))


def _features(spec, method, design, y):
    if method == "kmeans" and spec.n_gate_features > 0:
        return design.gate[:, 1:] if spec.gate_design_has_intercept else design.gate
    return jnp.concatenate([design.expert[:, 1:], y], axis=1)


def initial_responsibilities(spec, method: str, key, design, y, w) -> jax.Array:
    """Hard responsibilities (n, n_leaves) from clustering, placed on leaves tree-consistently (a capacity tree:
    as many clusters as its layout has leaves, placed on its tree, :func:`hme.capacity.place_clusters`)."""
    L = spec.tree.n_leaves
    layout = capacity.active_layout(spec)
    on = None if layout is None else layout.leaf_on  # the first centres drawn are the clusters used
    F = _standardize(_features(spec, method, design, y), w)
    if method == "random":
        C = _seed_centres(key, F, w, L, power=0)
    else:
        C = _lloyd(F, w, _seed_centres(key, F, w, L, power=2), on)
    perm = _place_clusters(spec.tree.structure, C) if layout is None else capacity.place_clusters(layout, C)
    leaf_of_cluster = jnp.argsort(perm)
    assign = _nearest(F, C, on)
    return jax.nn.one_hot(leaf_of_cluster[assign], L, dtype=F.dtype)


def params_from_responsibilities(spec, design, y, w, resp, opts, gate_solver="newton", expert_solver="newton"):
    """Fit experts to ``resp`` and gates to smoothed ``resp``: the M-step of EM started from responsibilities."""
    dtype = design.expert.dtype
    fam = spec.expert_family
    params = zeros_params(spec, dtype)
    leaf_w = resp * w[:, None]
    leaf_gram = weighted_gram(design.expert, leaf_w)

    # a few warm M-steps from zero (one for closed-form families)
    ex = fam.initial_fit(spec, params.experts, design.expert, y, leaf_w, leaf_gram, opts, expert_solver,
                         _INIT_NEWTON_STEPS)

    layout = capacity.active_layout(spec)
    if layout is None:
        uniform = 1.0 / spec.tree.n_leaves
    else:
        uniform = layout.leaf_on.astype(dtype) / capacity.n_active_leaves(layout).astype(dtype)
    soft = (0.9 * resp + 0.1 * uniform) * w[:, None]
    edge_w = edge_mass(spec, soft)
    node_w = jnp.sum(edge_w, -1)
    g = _gates.start(spec, params.gates, design.gate, edge_w)  # location families: children's centroids
    node_gram = None
    if gate_solver == "bound" and _gates.uses_node_gram(spec):
        node_gram = weighted_gram(design.gate, node_w)

    def gate_step(_, g):
        lp = _gates.gate_log_probs(spec, design.gate, g)
        return _gates.m_step(spec, g, design.gate, lp, edge_w, node_w, opts.gate_alpha, gate_solver, node_gram)

    closed = all(f.closed_form for f in spec.gate_families)
    g = jax.lax.fori_loop(0, 1 if closed else _INIT_NEWTON_STEPS, gate_step, g)
    return capacity.with_absent_neutral(spec, HMEParams(g, ex), opts.coef_target)
