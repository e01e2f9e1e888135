r"""All the gates of a tree at once, whatever their families.

A tree's gates are grouped by family (:func:`gate_groups`: one group for a one-family tree, one per family for
per-level trees such as the HMoE paper's softmax-above-Laplace). Each family computes its own gates' logits,
M-step, penalty and reparametrisations (:mod:`hme.families`); this module gathers and scatters them.

Designs: the gate design is ``[1, X_gate]`` when any family in the tree reads an intercept, else ``X_gate``;
a family without an intercept reads ``X_gate`` (the design without its first column).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._logit import masked_log_softmax
from .families import GateFamily, GateProblem, gate_family, take_gates
from .params import GateParams
from .spec import ModelSpec


def gate_groups(spec: ModelSpec) -> tuple[tuple[GateFamily, np.ndarray | None], ...]:
    """((family, gate indices), ...) in first-appearance order; the indices are None when one family has all gates."""
    kinds = spec.gate_kinds
    names = list(dict.fromkeys(kinds))
    if len(names) == 1:
        return ((gate_family(names[0]), None),)
    return tuple((gate_family(n), np.flatnonzero([k == n for k in kinds])) for n in names)


def family_design(spec: ModelSpec, family: GateFamily, design: jax.Array) -> jax.Array:
    """The tree's gate design in ``family``'s form (without the intercept column where it reads none)."""
    return design[:, 1:] if spec.gate_design_has_intercept and not family.intercept else design


def _select(gates: GateParams, idx) -> GateParams:
    return gates if idx is None else take_gates(gates, idx)


def _scatter(out: GateParams, idx, part: GateParams) -> GateParams:
    if idx is None:
        return part
    cov = out.cov if part.cov is None else out.cov.at[idx].set(part.cov)
    return GateParams(out.bias.at[idx].set(part.bias), out.weight.at[idx].set(part.weight), cov)


def gate_logits(spec: ModelSpec, design: jax.Array, gates: GateParams) -> jax.Array:
    """Unnormalised log gate probabilities of every gate, (n, n_gates, max_branching)."""
    groups = gate_groups(spec)
    if len(groups) == 1:
        fam, _ = groups[0]
        return fam.logits(spec, family_design(spec, fam, design), gates)
    out = jnp.zeros((design.shape[0],) + gates.bias.shape, design.dtype)
    for fam, idx in groups:
        out = out.at[:, idx].set(fam.logits(spec, family_design(spec, fam, design), take_gates(gates, idx)))
    return out


def gate_log_probs(spec: ModelSpec, design: jax.Array, gates: GateParams) -> jax.Array:
    """Log gate probabilities of every gate, (n, n_gates, max_branching); absent children give 0."""
    return masked_log_softmax(gate_logits(spec, design, gates), spec.tree.child_mask)


def m_step(
    spec: ModelSpec,
    gates: GateParams,
    design: jax.Array,
    log_prob: jax.Array,
    edge_w: jax.Array,
    node_w: jax.Array,
    gate_alpha,
    solver: str,
    node_gram: jax.Array | None = None,
    hessian_gram: jax.Array | None = None,
) -> GateParams:
    """Generalized M-step for all gates: each family's step on its own gates (independent problems).

    edge_w : (n, G, B) posterior mass through each edge times sample weight (soft targets);
    node_w : (n, G) posterior mass at each gate (case weights). The precomputed Grams serve one-family trees.
    """
    mask = np.asarray(spec.tree.child_mask)
    groups = gate_groups(spec)
    out = gates
    for fam, idx in groups:
        sel = (lambda a: a) if idx is None else (lambda a, idx=idx: a[:, idx])
        problem = GateProblem(
            design=family_design(spec, fam, design),
            log_prob=sel(log_prob),
            edge_w=sel(edge_w),
            node_w=sel(node_w),
            root_w=node_w[:, 0],
            mask=mask if idx is None else mask[idx],
            gate_alpha=gate_alpha,
            solver=solver if idx is None else "newton",
            node_gram=node_gram if idx is None else None,
            hessian_gram=hessian_gram if idx is None else None,
        )
        new = fam.m_step(spec, _select(gates, idx), problem)
        out = _scatter(out, idx, new)
    return GateParams(out.bias, out.weight, out.cov)


def penalty(spec: ModelSpec, gates: GateParams, gate_alpha) -> jax.Array:
    """Σ over families of each family's ridge on its gates (scale of the summed log-likelihood)."""
    return sum(fam.penalty(_select(gates, idx), gate_alpha) for fam, idx in gate_groups(spec))


def shift(spec: ModelSpec, gates: GateParams, x_shift: jax.Array, sign: float) -> GateParams:
    """The gates re-expressed for gate inputs moved by ``-sign · x_shift`` (exact)."""
    out = gates
    for fam, idx in gate_groups(spec):
        out = _scatter(out, idx, fam.shift(_select(gates, idx), x_shift, sign))
    return out


def zeros(spec: ModelSpec, dtype) -> GateParams:
    """Uniform gates: zero biases and weights (unit covariances where the family has them)."""
    t = spec.tree
    G, B, p = t.n_gates, t.max_branching, spec.n_gate_features
    out = None
    for fam, idx in gate_groups(spec):
        part = fam.zeros(G if idx is None else len(idx), B, p, dtype)
        if idx is None:
            return part
        if out is None:
            out = GateParams(jnp.zeros((G, B), dtype), jnp.zeros((G, B, p), dtype))
        out = _scatter(out, idx, part)
    return out


def start(spec: ModelSpec, gates: GateParams, design: jax.Array, edge_w: jax.Array) -> GateParams:
    """Gates before a start's Newton steps (location families: children's centroids, :meth:`GateFamily.start`)."""
    mask = np.asarray(spec.tree.child_mask)
    out = gates
    for fam, idx in gate_groups(spec):
        e = edge_w if idx is None else edge_w[:, idx]
        part = fam.start(_select(gates, idx), family_design(spec, fam, design), e, mask if idx is None else mask[idx])
        out = _scatter(out, idx, part)
    return out


def uses_node_gram(spec: ModelSpec) -> bool:
    """One family on every gate, a linear logit that takes Gram matrices (:attr:`GateFamily.uses_node_gram`)."""
    groups = gate_groups(spec)
    return len(groups) == 1 and groups[0][0].uses_node_gram


def models_inputs(spec: ModelSpec) -> bool:
    """Whether the gate is a density on the inputs (EM then maximises the joint likelihood of (x, y))."""
    return any(fam.models_inputs for fam, _ in gate_groups(spec))


def log_marginal(spec: ModelSpec, design: jax.Array, gates: GateParams) -> jax.Array:
    """(n,) ``log p(x_t)`` of a tree whose gate models the inputs (one gate: :attr:`GateFamily.models_inputs`)."""
    (fam, _), = gate_groups(spec)
    return fam.log_marginal(spec, family_design(spec, fam, design), gates)


def free_masks(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """(bias, weight-row) NumPy bool masks, each (n_gates, max_branching), of the free gate entries: existing
    children, less each family's reference conventions (:meth:`GateFamily.free_masks`)."""
    child = np.asarray(spec.tree.child_mask, bool)
    bias, weight = np.zeros_like(child), np.zeros_like(child)
    for fam, idx in gate_groups(spec):
        sel = slice(None) if idx is None else idx
        bias[sel], weight[sel] = fam.free_masks(child[sel])
    return bias, weight


def extra_unconstrained(spec: ModelSpec, gates: GateParams) -> dict:
    """Unconstrained forms of the gates' parameters beyond bias and weight (families that have them)."""
    out = {}
    for fam, idx in gate_groups(spec):
        out.update(fam.extra_unconstrained(_select(gates, idx)))
    return out


def constrain(spec: ModelSpec, u: dict) -> GateParams:
    """Gate parameters from the gradient solvers' unconstrained values ``u`` (``gate_bias``, ``gate_weight`` and
    any family extras); fixed entries are 0."""
    bias_mask, weight_mask = free_masks(spec)
    weight = jnp.where(weight_mask[..., None], u["gate_weight"], 0.0)
    bias, cov = jnp.zeros_like(u["gate_bias"]), None
    for fam, idx in gate_groups(spec):
        sel = slice(None) if idx is None else idx
        b, c = fam.constrain(u["gate_bias"][sel], bias_mask[sel], u)
        bias = b if idx is None else bias.at[idx].set(b)
        cov = c if idx is None else cov
    return GateParams(bias, weight, cov)
