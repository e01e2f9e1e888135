r"""Fixed-capacity binary trees: one compiled program for every binary tree of up to K leaves.

A :class:`hme.tree.TreeSpec` is static: its incidence matrices are constants of the compiled program, so every
distinct tree compiles its own. A :class:`CapacityTree` of capacity K is static only in its sizes (K leaves,
K - 1 binary gates); which of them exist and how they connect is a :class:`Layout` of arrays passed to the
program as data. A binary tree with L ≤ K leaves and G = L - 1 gates occupies gates ``0 … G-1`` (level order)
and leaves ``0 … L-1`` (left to right), numbered as its own ``TreeSpec`` numbers them, so its parameters are the
first G gate rows and the first L expert rows of the capacity tree's:

* the E-step's log path of leaf l is ``Σ_e A_el · on_g(e) · log g_e`` with the layout's incidence A (an inactive
  gate's log-probabilities are replaced by 0 before the product), and an inactive leaf gets ``log π_l = -∞``,
  so ``h_l = 0`` and the likelihood is that of the L-leaf tree;
* the M-step keeps inactive gates and experts where they are (:func:`keep_active`): their weights are zero.

Inside a traced function, ``with bind(layout):`` makes the layout the one ``CapacityTree.edge_leaf``,
``gate_leaf`` and :func:`active_layout` return; the fitting programs (:mod:`hme.em`) take it as an argument and
bind it around their body. Growth (:mod:`hme.grow`) fits every tree it tries through one capacity.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import batched_linalg
from .tree import TreeSpec


class Layout(NamedTuple):
    """Which gates and leaves of a capacity-K tree exist, and how they connect (arrays; traced inside a fit).

    edge_leaf : (2(K-1), K) 0/1, entry (2g + c, l): leaf l lies below child c of gate g
    gate_leaf : (K-1, K) 0/1, leaf l lies below gate g
    leaf_on : (K,) bool, the first L leaves exist
    gate_on : (K-1,) bool, the first L - 1 gates exist
    parent_edge : (K-1,) int32, the edge 2g + c leading into each gate (-1 for the root and inactive gates)
    """

    edge_leaf: jax.Array
    gate_leaf: jax.Array
    leaf_on: jax.Array
    gate_on: jax.Array
    parent_edge: jax.Array


_BOUND: contextvars.ContextVar[Layout | None] = contextvars.ContextVar("hme_capacity_layout", default=None)


@dataclasses.dataclass(frozen=True)
class CapacityTree:
    """Static sizes of a binary tree of at most ``max_leaves`` leaves (``max_leaves - 1`` gates); the tree itself
    is the :class:`Layout` bound around the traced computation (:func:`bind`)."""

    max_leaves: int

    def __post_init__(self):
        if isinstance(self.max_leaves, bool) or not isinstance(self.max_leaves, (int, np.integer)) or \
                self.max_leaves < 2:
            raise ValueError(f"a capacity tree needs max_leaves >= 2, got {self.max_leaves!r}")
        object.__setattr__(self, "max_leaves", int(self.max_leaves))

    @property
    def n_leaves(self) -> int:
        return self.max_leaves

    @property
    def n_gates(self) -> int:
        return self.max_leaves - 1

    @property
    def max_branching(self) -> int:
        return 2

    @property
    def child_mask(self) -> np.ndarray:
        return np.ones((self.n_gates, 2), bool)

    @property
    def n_children(self) -> np.ndarray:
        return np.full(self.n_gates, 2)

    @property
    def edge_leaf(self) -> jax.Array:
        return _bound().edge_leaf

    @property
    def gate_leaf(self) -> jax.Array:
        return _bound().gate_leaf

    def __repr__(self) -> str:
        return f"CapacityTree(max_leaves={self.max_leaves})"


def _bound() -> Layout:
    layout = _BOUND.get()
    if layout is None:
        raise RuntimeError("a CapacityTree's structure is its Layout: call inside `with hme.capacity.bind(layout):` "
                           "(hme.fit_em(..., layout=...) does this)")
    return layout


def active_layout(spec) -> Layout | None:
    """The bound layout when ``spec``'s tree is a :class:`CapacityTree`, else None."""
    return _bound() if isinstance(spec.tree, CapacityTree) else None


@contextlib.contextmanager
def bind(layout: Layout | None):
    """Make ``layout`` the structure of capacity trees for the computation inside (no effect for None)."""
    if layout is None:
        yield
        return
    token = _BOUND.set(layout)
    try:
        yield
    finally:
        _BOUND.reset(token)


def layout(structure: tuple, max_leaves: int) -> Layout:
    """The NumPy layout of a binary ``structure`` (nested tuples, :class:`hme.tree.TreeSpec`) in a capacity tree
    of ``max_leaves`` leaves."""
    tree = TreeSpec(structure)
    K = int(max_leaves)
    if tree.max_branching != 2:
        raise ValueError(f"capacity trees are binary, got a gate with {tree.max_branching} children")
    if tree.n_leaves > K:
        raise ValueError(f"the tree has {tree.n_leaves} leaves, more than the capacity {K}")
    G, L = tree.n_gates, tree.n_leaves
    edge_leaf = np.zeros((2 * (K - 1), K), np.int8)
    edge_leaf[: 2 * G, :L] = tree.edge_leaf
    gate_leaf = np.zeros((K - 1, K), np.int8)
    gate_leaf[:G, :L] = tree.gate_leaf
    parent_edge = np.full(K - 1, -1, np.int32)
    parent_edge[:G] = tree.parent_edge
    return Layout(edge_leaf, gate_leaf, np.arange(K) < L, np.arange(K - 1) < G, parent_edge)


def capacity_spec(spec, max_leaves: int):
    """``spec`` with its tree replaced by a capacity tree of ``max_leaves`` leaves."""
    return dataclasses.replace(spec, tree=CapacityTree(max_leaves))


# -- inside a fit --------------------------------------------------------------------------------------------


def mask_log_path(layout: Layout, gate_log_prob: jax.Array) -> jax.Array:
    """(n, K-1, 2) log gate probabilities -> (n, K) log path probabilities, -∞ for inactive leaves."""
    n = gate_log_prob.shape[0]
    glp = jnp.where(layout.gate_on[None, :, None], gate_log_prob, 0.0)
    log_path = glp.reshape(n, -1) @ jnp.asarray(layout.edge_leaf, glp.dtype)
    return jnp.where(layout.leaf_on[None], log_path, -jnp.inf)


def keep_active(spec, new, old):
    """HMEParams ``new`` where the gate or leaf exists, ``old`` elsewhere (``new`` for trees without a layout):
    an M-step leaves the parameters of absent gates and experts (weight zero) where they are."""
    lay = active_layout(spec)
    if lay is None:
        return new

    def keep(on):
        return lambda a, b: None if a is None else jnp.where(on.reshape(on.shape + (1,) * (a.ndim - 1)), a, b)

    is_none = lambda a: a is None
    gates = jax.tree_util.tree_map(keep(lay.gate_on), new.gates, old.gates, is_leaf=is_none)
    experts = jax.tree_util.tree_map(keep(lay.leaf_on), new.experts, old.experts, is_leaf=is_none)
    return type(new)(gates, experts)


def n_active_leaves(layout: Layout) -> jax.Array:
    return jnp.sum(layout.leaf_on)


def place_clusters(layout: Layout, C: jax.Array) -> jax.Array:
    """perm[l] = cluster placed on leaf l, as :func:`hme.init` places clusters on a static tree, for the layout's
    tree: the first L rows of ``C`` (K, f) are its clusters; at every gate (level order, so parents first) the
    clusters of its subtree are sorted along their leading principal axis and the first ``m`` (the leaves below
    child 0) go to child 0, the rest to child 1. Entries of inactive leaves are their own index."""
    layout = Layout(*(jnp.asarray(a) for a in layout))
    K = C.shape[0]
    G = K - 1
    L = n_active_leaves(layout)
    below = jnp.sum(layout.edge_leaf, axis=1).reshape(G, 2)  # leaves below each edge
    # clusters of each edge's subtree, as a mask (2G, K); the root's gate takes every active cluster
    edge_set = jnp.zeros((2 * G, K), bool)
    idx = jnp.arange(K)

    def at_gate(g, edge_set):
        pe = layout.parent_edge[g]
        mine = jnp.where(pe >= 0, edge_set[jnp.maximum(pe, 0)], idx < L)
        sub = jnp.where(mine[:, None], C, 0.0)
        sub = jnp.where(mine[:, None], sub - jnp.sum(sub, 0) / jnp.maximum(jnp.sum(mine), 1), 0.0)
        score = batched_linalg.leading_eigenvector(sub @ sub.T)
        # the clusters of this gate in order of their score, then the rest; rank r < m goes to child 0
        order = jnp.argsort(jnp.where(mine, score, jnp.inf), stable=True)
        rank = jnp.zeros(K, jnp.int32).at[order].set(jnp.arange(K, dtype=jnp.int32))
        left = mine & (rank < below[g, 0])
        right = mine & ~left
        on = layout.gate_on[g]
        edge_set = edge_set.at[2 * g].set(jnp.where(on, left, edge_set[2 * g]))
        return edge_set.at[2 * g + 1].set(jnp.where(on, right, edge_set[2 * g + 1]))

    edge_set = jax.lax.fori_loop(0, G, at_gate, edge_set)
    # leaf l's cluster: the one cluster of its last edge (the deepest edge on its path)
    # (gates are numbered parents first, so the deepest edge has the highest number)
    last = jnp.argmax(jnp.where(layout.edge_leaf > 0, jnp.arange(2 * G)[:, None], -1), axis=0)  # (K,)
    cluster = jnp.argmax(edge_set[last], axis=1)
    return jnp.where(layout.leaf_on, cluster, idx)


def with_absent_neutral(spec, params, coef_target=None):
    """``params`` with every absent gate and expert of the bound layout as :func:`hme.params.zeros_params` has
    them (uniform gates, unit covariances), expert slopes at the ridge's target (0 without one): at the
    penalty's zero, so the penalised objective is the layout's tree's own."""
    from .params import zeros_params

    lay = active_layout(spec)
    if lay is None:
        return params
    neutral = zeros_params(spec, params.experts.coef.dtype)
    coef = params.experts.coef
    if coef_target is not None:
        neutral = neutral._replace(experts=neutral.experts._replace(
            coef=jnp.broadcast_to(jnp.asarray(coef_target, coef.dtype), coef.shape)))
    return keep_active(spec, params, neutral)


def tree_result(result, structure: tuple):
    """An :class:`hme.fitting.EMResult` of a capacity-tree fit as the result of ``TreeSpec(structure)``'s own fit:
    the first G gates and L experts, and the per-leaf records of the first L leaves (the likelihood, the objective
    and the histories are already the tree's)."""
    tree = TreeSpec(structure)
    G, L = tree.n_gates, tree.n_leaves
    is_none = lambda a: a is None
    gates = jax.tree_util.tree_map(lambda a: None if a is None else a[:G], result.params.gates, is_leaf=is_none)
    experts = jax.tree_util.tree_map(lambda a: None if a is None else a[:L], result.params.experts, is_leaf=is_none)
    return result._replace(params=type(result.params)(gates, experts),
                           restart_leaf_count=result.restart_leaf_count[:, :L],
                           restart_collapsed=result.restart_collapsed[:, :L])


def embed(cspec, params):
    """A tree's ``params`` (G gates, L experts) as parameters of the capacity spec ``cspec``: the first G gate and
    L expert rows, the rest as :func:`hme.params.zeros_params` has them."""
    from .params import zeros_params

    # the padding in the closest dtype JAX has (float64 parameters without x64), then cast like the rows given
    full = zeros_params(cspec, jax.dtypes.canonicalize_dtype(np.asarray(params.experts.coef).dtype))

    def put(a, b):
        if a is None:
            return None
        b = np.asarray(b)
        return np.concatenate([b, np.asarray(a)[b.shape[0]:]]).astype(b.dtype)

    is_none = lambda a: a is None
    gates = jax.tree_util.tree_map(put, full.gates, params.gates, is_leaf=is_none)
    experts = jax.tree_util.tree_map(put, full.experts, params.experts, is_leaf=is_none)
    return type(params)(gates, experts)
