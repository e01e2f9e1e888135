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

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import code_space, compile_cache
from . import gates as tree_gates
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
    cov = None if g.cov is None else np.asarray(g.cov).copy()
    for gn, go in new_of_old_gate.items():
        sig = order[gate_paths[go]]
        k = len(sig)
        # each family restores its reference conventions (softmax slopes are relative to the reference child;
        # Laplace keys are locations and stay)
        bias[gn, :k], weight[gn, :k] = spec.gate_families[gn].canonical_rows(g.bias[go, sig], g.weight[go, sig])
        if cov is not None:
            cov[gn, :k] = np.asarray(g.cov)[go, sig]
    L = spec.tree.n_leaves
    perm = np.array([new_of_old_leaf[l] for l in range(L)])
    ex = ExpertParams(*(None if a is None else a[perm] for a in e))
    cast = lambda a: None if a is None else jnp.asarray(a, np.asarray(params.experts.coef).dtype)
    return HMEParams(GateParams(cast(bias), cast(weight), cast(cov)), jax.tree_util.tree_map(cast, ex))


def n_free_parameters(spec: ModelSpec) -> int:
    """The number of free parameters of ``spec`` (each family's own count; for BIC/AIC)."""
    t = spec.tree
    k_gate = sum(fam.n_parameters(int(nc), spec.n_gate_features)
                 for fam, nc in zip(spec.gate_families, t.n_children, strict=True))
    k_exp = t.n_leaves * (spec.n_expert_features + 1) * spec.n_expert_outputs
    k_exp -= (t.n_leaves - 1) * len(spec.shared_rows) * spec.n_expert_outputs  # fixed effects: one copy
    return int(k_gate + k_exp + spec.expert_family.n_noise_parameters(spec))


def _parameter_map(spec, params, feature_names=None):
    """(theta, srcs, names): the free parameters, one index array per parameter leaf (θ-index of each entry,
    -1 where the entry is fixed: reference children, mirrored covariance entries) and readable names."""
    names_x = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(spec.n_features)]
    gnames = names_x if spec.gate_features is None else [names_x[i] for i in spec.gate_features]
    enames = names_x if spec.expert_features is None else [names_x[i] for i in spec.expert_features]
    t = spec.tree
    leaves = jax.tree_util.tree_leaves(params)
    names, counter = [], [0]

    def take(name):
        names.append(name)
        counter[0] += 1
        return counter[0] - 1

    src_gb = -np.ones(params.gates.bias.shape, int)
    src_gw = -np.ones(params.gates.weight.shape, int)
    free_bias, free_weight = tree_gates.free_masks(spec)
    for gi in range(t.n_gates):
        what = spec.gate_families[gi].weight_label
        for c in range(t.max_branching):
            if free_bias[gi, c]:
                src_gb[gi, c] = take(f"gate {gi} child {c}: bias")
            if free_weight[gi, c]:
                for j, nm in enumerate(gnames):
                    src_gw[gi, c, j] = take(f"gate {gi} child {c}: {what} {nm}")
    if params.gates.cov is not None:  # Gaussian gates: each child's covariance, upper triangle
        src_gc = -np.ones(params.gates.cov.shape, int)
        for gi in range(t.n_gates):
            for c in range(t.n_children[gi]):
                for a in range(len(gnames)):
                    for b in range(a, len(gnames)):
                        src_gc[gi, c, a, b] = src_gc[gi, c, b, a] = take(
                            f"gate {gi} child {c}: cov[{gnames[a]}, {gnames[b]}]")
    k = spec.n_expert_outputs
    out = lambda kk: spec.expert_family.output_label(k, kk)
    src_ei = -np.ones(params.experts.intercept.shape, int)
    src_ec = -np.ones(params.experts.coef.shape, int)
    shared = {r - 1 for r in spec.shared_rows}  # coef rows common to all leaves: one entry, named once
    for l in range(t.n_leaves):
        for kk in range(k):
            src_ei[l, kk] = take(f"leaf {l}: intercept{out(kk)}")
            for j, nm in enumerate(enames):
                if j in shared and l > 0:
                    src_ec[l, j, kk] = src_ec[0, j, kk]
                else:
                    src_ec[l, j, kk] = take(f"{'shared' if j in shared else f'leaf {l}'}: {nm}{out(kk)}")
    srcs = [src_gb, src_gw] + ([src_gc] if params.gates.cov is not None else []) + [src_ei, src_ec]
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
    if params.experts.df is not None:  # Student-t degrees of freedom: free unless the spec fixes them
        src_df = -np.ones(params.experts.df.shape, int)
        if spec.expert_df is None:
            for l in range(t.n_leaves):
                src_df[l] = take(f"leaf {l}: df")
        srcs.append(src_df)
    theta = np.zeros(counter[0], np.asarray(leaves[0]).dtype)
    for src, arr in zip(srcs, leaves, strict=True):
        a = np.asarray(arr)
        theta[src[src >= 0]] = a[src >= 0]
    return theta, srcs, names


def _unflatten(th, srcs, base):
    """Parameters (a list of leaf arrays like ``base``) with the free entries taken from θ."""
    return [jnp.where(s >= 0, th[jnp.maximum(s, 0)], b) for s, b in zip(srcs, base, strict=True)]


def free_parameter_draws(spec: ModelSpec, stacked: HMEParams, feature_names=None):
    """(theta (D, P), names): the free parameters of D parameter sets stacked on a leading axis (posterior
    draws), named as in :func:`free_parameters`."""
    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(stacked)]
    first = jax.tree_util.tree_map(lambda a: None if a is None else np.asarray(a)[0], stacked)
    _, srcs, names = _parameter_map(spec, first, feature_names)
    theta = np.zeros((leaves[0].shape[0], len(names)), leaves[0].dtype)
    for src, arr in zip(srcs, leaves, strict=True):
        theta[:, src[src >= 0]] = arr[:, src >= 0]
    return theta, names


def free_parameters(spec: ModelSpec, params: HMEParams, feature_names=None):
    """(theta, unflatten, names): the free parameters as a vector, its inverse map and readable names."""
    theta, srcs, names = _parameter_map(spec, params, feature_names)
    base = [jnp.asarray(a) for a in jax.tree_util.tree_leaves(params)]
    treedef = jax.tree_util.tree_structure(params)
    srcs_j = [jnp.asarray(s) for s in srcs]

    def unflatten(th):
        return jax.tree_util.tree_unflatten(treedef, _unflatten(th, srcs_j, base))

    return jnp.asarray(theta), unflatten, names


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _derivatives(spec, treedef, kind, theta, srcs, base, X, y, w, penalty_opts=None, x_mean=None):
    """-∇² [Σ_t w_t log p(y_t | x_t; θ) - penalty(θ)] (P, P), and for ``kind="sandwich"`` also
    J = Σ_t w_t s_t s_tᵀ. The penalty (of :func:`hme.fitting.penalty`, on inputs centred at ``x_mean`` as the fit
    had them) is included when ``penalty_opts`` is given."""
    from .fitting import penalty
    from .params import center_params

    d = make_design(spec, X)

    def params_of(th):
        return jax.tree_util.tree_unflatten(treedef, _unflatten(th, srcs, base))

    def per_sample(th):
        return joint(spec, params_of(th), d, y).log_lik

    def objective(th):
        value = jnp.sum(w * per_sample(th))
        if penalty_opts is not None:
            value = value - penalty(spec, center_params(spec, params_of(th), x_mean, 1.0), penalty_opts)
        return value

    info = -jax.hessian(objective)(theta)
    if kind == "observed":
        return info, None
    S = jax.jacrev(per_sample)(theta)  # (n, P) per-sample scores
    return info, (S * w[:, None]).T @ S


def _information(spec, params, X, y, sample_weight, feature_names, kind, penalty_opts=None):
    """(theta, names, I, J): rows padded to a size bucket with zero weight so that one compiled program
    serves data sets of nearby sizes."""
    from ._linalg import padded_length

    compile_cache.enable_default()

    code_space.ensure_code_space()
    X = jnp.asarray(X)
    y = prepare_targets(spec, y, X.dtype)
    n = X.shape[0]
    w = jnp.ones(n, X.dtype) if sample_weight is None else jnp.asarray(sample_weight, X.dtype)
    pad = padded_length(n) - n
    if pad:
        X, y, w = (jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)) for a in (X, y, w))
    if params.gates.cov is not None:
        raise ValueError(
            "standard errors are available for softmax and Laplace gates; Gaussian gates (a joint model of x and y) "
            "are not supported yet"
        )
    theta, srcs, names = _parameter_map(spec, params, feature_names)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    x_mean = None
    if penalty_opts is not None:
        penalty_opts = jax.tree_util.tree_map(lambda a: None if a is None else jnp.asarray(a, X.dtype), penalty_opts)
        x_mean = (w @ X) / jnp.sum(w)
    info, J = _derivatives(spec, treedef, kind, jnp.asarray(theta), [jnp.asarray(s) for s in srcs],
                           [jnp.asarray(a) for a in leaves], X, y, w, penalty_opts, x_mean)
    return theta, names, info, J


def observed_information(spec: ModelSpec, params: HMEParams, X, y, sample_weight=None, feature_names=None):
    """(theta, names, I) with I = -Hessian of the weighted log-likelihood at ``params`` (P, P)."""
    theta, names, info, _ = _information(spec, params, X, y, sample_weight, feature_names, "observed")
    return jnp.asarray(theta), names, info


#: Relative size below which an eigenvalue of the information counts as zero, per fit dtype (the Hessian is
#: exact to rounding, so float32 fits need a larger threshold).
SINGULAR_RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-9}
#: A parameter whose squared loading on the (near-)null space of the information exceeds this is not identified.
NULL_LOADING = 1e-6


class StandardErrors(NamedTuple):
    """Estimates θ (P,), standard errors (P,; NaN where not identified), names, covariance (P, P; NaN rows and
    columns where not identified), ``not_identified`` (P,) bool and ``negative_curvature`` (P,) bool."""

    estimate: np.ndarray
    std_err: np.ndarray
    names: list
    covariance: np.ndarray
    not_identified: np.ndarray
    negative_curvature: np.ndarray


def standard_errors(spec: ModelSpec, params: HMEParams, X, y, sample_weight=None, kind="observed",
                    feature_names=None, penalty_opts=None) -> StandardErrors:
    r"""Standard errors of the free parameters from the observed information (see the module docstring).

    With the Jacobi-scaled information ``R = D^{-1/2} I D^{-1/2} = V Λ Vᵀ`` (``D = diag I``: the test does not
    depend on the inputs' units), eigenvalues ``λ ≤ rtol·max|λ|`` span directions the data do not determine (a flat
    likelihood: a saturated gate, an unused input, a leaf with no data); ``λ < -rtol·max|λ|`` are directions of
    negative curvature (not a maximum). A parameter loading on either (``Σ_k V_{jk}² > NULL_LOADING`` over those
    k) gets NaN. The rest use the inverse on the identified subspace, ``Σ = D^{-1/2} V₊ Λ₊⁻¹ V₊ᵀ D^{-1/2}``
    (sandwich: ``Σ J Σ``). ``penalty_opts`` (a :class:`hme.fitting.FitOptions`): the fit maximised the penalised
    likelihood, so its curvature is that of the penalised objective (the Laplace approximation of the posterior
    whose mode the fit is); without it, the plain observed information."""
    if kind not in ("observed", "sandwich"):
        raise ValueError(f"kind must be 'observed' or 'sandwich', got {kind!r}")
    theta, names, info, J = _information(spec, params, X, y, sample_weight, feature_names, kind, penalty_opts)
    info = np.asarray(info, np.float64)
    info = 0.5 * (info + info.T)
    # Jacobi scaling, so that the test does not depend on the inputs' units: R = D^-1/2 I D^-1/2 with D = diag(I)
    d = np.abs(np.diag(info))
    dead = ~(d > 0)  # a parameter the likelihood does not depend on at all
    s = np.where(dead, 1.0, 1.0 / np.sqrt(np.where(dead, 1.0, d)))
    R = info * s[:, None] * s[None, :]
    R[dead, :] = 0.0
    R[:, dead] = 0.0
    lam, V = np.linalg.eigh(R)
    rtol = SINGULAR_RTOL.get(np.dtype(np.asarray(theta).dtype), 1e-5)
    scale = max(float(np.abs(lam).max(initial=0.0)), np.finfo(np.float64).tiny)
    keep = lam > rtol * scale
    negative = lam < -rtol * scale
    neg_load = np.sum(V[:, negative] ** 2, axis=1) > NULL_LOADING
    bad = (np.sum(V[:, ~keep] ** 2, axis=1) > NULL_LOADING) | dead
    cov = ((V[:, keep] / lam[keep]) @ V[:, keep].T) * s[:, None] * s[None, :]
    if kind == "sandwich":
        cov = cov @ np.asarray(J, np.float64) @ cov
    cov[bad, :] = np.nan
    cov[:, bad] = np.nan
    se = np.sqrt(np.diag(cov))
    return StandardErrors(np.asarray(theta, np.float64), se, names, cov, bad, neg_load & bad)
