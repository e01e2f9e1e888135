r"""Inference for fitted HMEs: a canonical leaf order, the free-parameter vector, observed information and
standard errors.

* :func:`canonicalize` reorders the children of every gate (siblings with identical subtrees) by the mean
  prediction of their subtree's experts at a reference input, re-expressing the gates for the new reference
  child. The model -- every prediction and likelihood -- is unchanged; two fits that reach the same optimum
  print the same table.
* :func:`free_parameters` maps the non-redundant parameters (reference children excluded, symmetric and shared
  covariances tied) to a vector θ and back.
* :func:`standard_errors`: ``"observed"`` -- SE = sqrt(diag(I⁻¹)) with the observed information
  ``I = -∇² Σ_t w_t log p(y_t | x_t; θ)`` (a JAX Hessian); ``"sandwich"`` -- ``I⁻¹ J I⁻¹`` with
  ``J = Σ_t w_t s_t s_tᵀ`` built from per-sample scores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import code_space
from .model import joint, make_design, prepare_targets
from .params import ExpertParams, GateParams, HMEParams
from .spec import ModelSpec


def _paths(structure):
    """Breadth-first gate paths and left-to-right leaf paths (tuples of child slots)."""
    gates, queue = [], [((), structure)]
    while queue:
        path, node = queue.pop(0)
        if node == ():
            continue
        gates.append(path)
        queue.extend((path + (c,), ch) for c, ch in enumerate(node))
    leaves = []

    def dfs(path, node):
        for c, ch in enumerate(node):
            (leaves.append(path + (c,)) if ch == () else dfs(path + (c,), ch))

    dfs((), structure)
    return gates, leaves


def _subtree(structure, path):
    node = structure
    for c in path:
        node = node[c]
    return node


def canonicalize(spec: ModelSpec, params: HMEParams, x_ref) -> HMEParams:
    """Equivalent parameters with siblings ordered by their subtree's mean expert prediction at ``x_ref``."""
    g, e = jax.tree_util.tree_map(lambda a: None if a is None else np.asarray(a), params)
    st = spec.tree.structure
    gate_paths, leaf_paths = _paths(st)
    gate_id = {p: i for i, p in enumerate(gate_paths)}
    leaf_id = {p: i for i, p in enumerate(leaf_paths)}
    x_e = np.asarray(x_ref) if spec.expert_features is None else np.asarray(x_ref)[list(spec.expert_features)]
    leaf_key = e.intercept[:, 0] + e.coef[:, :, 0] @ x_e  # (L,)

    def key(path):
        node = _subtree(st, path)
        if node == ():
            return leaf_key[leaf_id[path]]
        return np.mean([leaf_key[leaf_id[lp]] for lp in leaf_paths if lp[: len(path)] == path])

    # order of children per old gate (only among siblings with identical subtrees)
    order = {}
    for p in gate_paths:
        node = _subtree(st, p)
        slots = list(range(len(node)))
        if all(ch == node[0] for ch in node):
            slots = sorted(slots, key=lambda c: key(p + (c,)))
        order[p] = slots
    # map new paths to old paths
    new_of_old_gate, new_of_old_leaf = {}, {}

    def walk(new_path, old_path):
        node = _subtree(st, old_path)
        if node == ():
            new_of_old_leaf[leaf_id[new_path]] = leaf_id[old_path]
            return
        new_of_old_gate[gate_id[new_path]] = gate_id[old_path]
        for c_new, c_old in enumerate(order[old_path]):
            walk(new_path + (c_new,), old_path + (c_old,))

    walk((), ())
    bias, weight = g.bias.copy(), g.weight.copy()
    for gn, go in new_of_old_gate.items():
        sig = order[gate_paths[go]]
        k = len(sig)
        b_old = g.bias[go, sig]
        w_old = g.weight[go, sig]
        bias[gn, :k] = b_old - b_old[0]
        weight[gn, :k] = w_old - w_old[0] if spec.gate == "softmax" else w_old
    L = spec.tree.n_leaves
    perm = np.array([new_of_old_leaf[l] for l in range(L)])
    ex = ExpertParams(e.intercept[perm], e.coef[perm], None if e.cov is None else e.cov[perm])
    cast = lambda a: None if a is None else jnp.asarray(a, np.asarray(params.experts.coef).dtype)
    return HMEParams(GateParams(cast(bias), cast(weight)), jax.tree_util.tree_map(cast, ex))


def free_parameters(spec: ModelSpec, params: HMEParams, feature_names=None):
    """(theta, unflatten, names): the free parameters as a vector, its inverse map and readable names."""
    names_x = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(spec.n_features)]
    gnames = names_x if spec.gate_features is None else [names_x[i] for i in spec.gate_features]
    enames = names_x if spec.expert_features is None else [names_x[i] for i in spec.expert_features]
    t = spec.tree
    mask = t.child_mask
    leaves = jax.tree_util.tree_leaves(params)
    maps, names, counter = [], [], [0]

    def take(name):
        names.append(name)
        counter[0] += 1
        return counter[0] - 1

    src_gb = -np.ones(params.gates.bias.shape, int)
    src_gw = -np.ones(params.gates.weight.shape, int)
    for gi in range(t.n_gates):
        for c in range(t.max_branching):
            if not mask[gi, c]:
                continue
            if c > 0:
                src_gb[gi, c] = take(f"gate {gi} child {c}: bias")
            if c > 0 or spec.gate == "laplace":
                for j, nm in enumerate(gnames):
                    what = "key" if spec.gate == "laplace" else "coef"
                    src_gw[gi, c, j] = take(f"gate {gi} child {c}: {what} {nm}")
    k = spec.n_expert_outputs
    out = lambda kk: "" if k == 1 else (f" [class {kk + 1}]" if spec.expert == "categorical" else f" [y{kk}]")
    src_ei = -np.ones(params.experts.intercept.shape, int)
    src_ec = -np.ones(params.experts.coef.shape, int)
    for l in range(t.n_leaves):
        for kk in range(k):
            src_ei[l, kk] = take(f"leaf {l}: intercept{out(kk)}")
            for j, nm in enumerate(enames):
                src_ec[l, j, kk] = take(f"leaf {l}: {nm}{out(kk)}")
    srcs = [src_gb, src_gw, src_ei, src_ec]
    if params.experts.cov is not None:
        m = spec.n_targets
        src_cov = -np.ones(params.experts.cov.shape, int)
        groups = [list(range(t.n_leaves))] if spec.shared_covariance else [[l] for l in range(t.n_leaves)]
        for grp in groups:
            lab = "shared" if spec.shared_covariance else f"leaf {grp[0]}"
            if spec.covariance_type == "spherical":
                i0 = take(f"{lab}: variance")
                for l in grp:
                    src_cov[l, range(m), range(m)] = i0
            else:
                for a in range(m):
                    for b in range(a, m):
                        if a != b and spec.covariance_type == "diag":
                            continue
                        nm = "variance" if m == 1 else f"cov[{a},{b}]"
                        idx = take(f"{lab}: {nm}")
                        for l in grp:
                            src_cov[l, a, b] = src_cov[l, b, a] = idx
        srcs.append(src_cov)
    theta = np.zeros(counter[0], np.asarray(leaves[0]).dtype)
    for src, arr in zip(srcs, leaves):
        a = np.asarray(arr)
        theta[src[src >= 0]] = a[src >= 0]
    base = [jnp.asarray(a) for a in leaves]
    treedef = jax.tree_util.tree_structure(params)

    def unflatten(th):
        arrs = [jnp.where(jnp.asarray(s) >= 0, th[jnp.asarray(np.maximum(s, 0))], b) for s, b in zip(srcs, base)]
        return jax.tree_util.tree_unflatten(treedef, arrs)

    return jnp.asarray(theta), unflatten, names


def _per_sample_ll(spec, unflatten, X, y):
    d = make_design(spec, X)

    def f(th):
        return joint(spec, unflatten(th), d, y).log_lik

    return f


def observed_information(spec: ModelSpec, params: HMEParams, X, y, sample_weight=None, feature_names=None):
    """(theta, names, I) with I = -Hessian of the weighted log-likelihood at ``params``."""
    code_space.ensure_code_space()
    X = jnp.asarray(X)
    y = prepare_targets(spec, y, X.dtype)
    w = jnp.ones(X.shape[0], X.dtype) if sample_weight is None else jnp.asarray(sample_weight, X.dtype)
    theta, unflatten, names = free_parameters(spec, params, feature_names)
    f = _per_sample_ll(spec, unflatten, X, y)
    H = jax.hessian(lambda th: jnp.sum(w * f(th)))(theta)
    return theta, names, -H, (f, w)


def standard_errors(spec: ModelSpec, params: HMEParams, X, y, sample_weight=None, kind="observed", feature_names=None):
    """Estimates, standard errors and names of the free parameters (see the module docstring)."""
    if kind not in ("observed", "sandwich"):
        raise ValueError("kind must be 'observed' or 'sandwich'")
    theta, names, info, (f, w) = observed_information(spec, params, X, y, sample_weight, feature_names)
    info = np.asarray(info, np.float64)
    cov = np.linalg.pinv(0.5 * (info + info.T), hermitian=True)
    if kind == "sandwich":
        S = np.asarray(jax.jacrev(f)(theta), np.float64)  # (n, P) per-sample scores
        J = (S * np.asarray(w, np.float64)[:, None]).T @ S
        cov = cov @ J @ cov
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    return np.asarray(theta, np.float64), se, names, cov
