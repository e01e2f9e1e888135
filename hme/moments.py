r"""EM through sums over rows: the moments a chunk of data contributes, and the M-step that solves from them.

At parameters θ, for rows t with weights w_t, leaf weights h_tl (posteriors, or given responsibilities), design
rows d_t = [1, x_t] and targets y_t (:class:`Moments`):

.. math::  G_l = Σ_t w_t h_{tl} d_t d_tᵀ, \quad R_l = Σ_t w_t h_{tl} d_t y_tᵀ, \quad
           S_l = Σ_t w_t h_{tl} y_t y_tᵀ, \quad N_l = Σ_t w_t h_{tl},

which give the Gaussian experts' M-step in closed form (:func:`hme.families.gaussian.moments_m_step`), and for
every softmax gate u the linear term of Böhning's quadratic minoriser of its expected log-likelihood,

.. math::  c_u = Σ_t d_t (e_{tu} - n_{tu} p_{tu}(θ)) + C_u θ_u, \qquad C_u = ½ (I - 11ᵀ/B_u) ⊗ Σ_l A_{ul} G_l

(e: edge posteriors, n: node posteriors, A: the gate–leaf incidence), whose maximiser with the ridge P,
``θ_u' = (C_u + P)⁻¹ c_u``, is the ``gate_solver="bound"`` step of :func:`hme.fit_em` (minorise–maximise: the
likelihood never decreases). The sums add over chunks, so EM over chunks of any size is the in-memory iteration.
The two compiled programs here (:func:`moments_of`, :data:`solve_moments`) are all a streamed or online fit
compiles: compilation's memory, not the chunk's, would otherwise dominate.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._linalg import solve_psd, weighted_gram
from ._logit import bound_curvature, free_probs, penalised_curvature
from .families.gaussian import moments_m_step
from .fitting import FitOptions, penalty
from .model import edge_mass, joint, make_design
from .params import GateParams, HMEParams
from .spec import ModelSpec


class Moments(NamedTuple):
    """Weighted sums over rows at fixed parameters (module docstring): float64 NumPy on the host, or arrays of the
    fit's dtype inside the compiled programs."""

    total: np.ndarray  # () Σ w
    log_lik: np.ndarray  # () Σ w log p(y | x)
    gram: np.ndarray  # (L, q, q)
    rhs: np.ndarray  # (L, q, m)
    yy: np.ndarray  # (L, m, m)
    mass: np.ndarray  # (L,)
    gate_lin: np.ndarray  # (G, (B-1) q): the gates' surrogate linear terms c_u

    def __add__(self, other: Moments) -> Moments:
        return Moments(*(a + np.asarray(b, np.float64) for a, b in zip(self, other, strict=True)))

    def scaled(self, c: float) -> Moments:
        return Moments(*(c * a for a in self))

    def on_host(self) -> Moments:
        """These moments as float64 NumPy arrays (waits for the device)."""
        return Moments(*(np.asarray(a, np.float64) for a in jax.device_get(self)))

    def as_dtype(self, dtype) -> Moments:
        return Moments(*(jnp.asarray(a, dtype) for a in self))


def check_streamable(spec: ModelSpec) -> None:
    """A ValueError unless the moments cover ``spec``: Gaussian experts, softmax gates on the experts' inputs."""
    if spec.expert != "gaussian":
        raise ValueError(f"streamed and online EM fit Gaussian experts; got expert={spec.expert!r}")
    if spec.gate_kinds != ("softmax",) * spec.tree.n_gates:
        raise ValueError(f"streamed and online EM fit softmax gates; got gates {sorted(set(spec.gate_kinds))}")
    if not spec.shares_design:
        raise ValueError("streamed and online EM need the gates and experts to see the same inputs "
                         "(gate_features == expert_features)")


def chunk_moments(spec: ModelSpec, params: HMEParams, X: jax.Array, y: jax.Array, w: jax.Array,
                  resp: jax.Array | None = None) -> tuple[Moments, jax.Array]:
    """The :class:`Moments` of rows ``X`` (c, p), ``y`` (c, m), ``w`` (c,) (rows of zero weight add nothing), with
    the leaf posteriors at ``params`` as leaf weights, or the responsibilities ``resp`` (c, L) where ``resp`` has a
    row of non-negative entries (rows of ``resp`` set to -1 use the posteriors); and the posteriors (c, L)."""
    mask = np.asarray(spec.tree.child_mask, bool)
    design = make_design(spec, X)
    j = joint(spec, params, design, y)
    h = j.leaf_post if resp is None else jnp.where(resp[:, :1] >= 0, resp, j.leaf_post)
    leaf_w = h * w[:, None]
    D = design.expert
    q = D.shape[1]
    full = weighted_gram(jnp.concatenate([D, y], axis=1), leaf_w)  # (L, q + m, q + m): one pass for all three
    gram, rhs, yy = full[:, :q, :q], full[:, :q, q:], full[:, q:, q:]
    edge_w = edge_mass(spec, leaf_w)
    node_w = jnp.sum(edge_w, -1)
    resid = edge_w[:, :, 1:] - node_w[:, :, None] * free_probs(j.gate_log_prob, mask)
    grad = jnp.einsum("nq,nub->ubq", D, resid)
    node_gram = jnp.einsum("gl,lij->gij", jnp.asarray(spec.tree.gate_leaf, D.dtype), gram)
    G, Bf, _ = grad.shape
    theta = gate_theta(params.gates)[:, 1:, :].reshape(G, Bf * q)
    lin = grad.reshape(G, Bf * q) + jnp.einsum("gij,gj->gi", bound_curvature(node_gram, mask), theta)
    lin = jnp.where(np.repeat(mask[:, 1:], q, axis=1), lin, 0.0)
    ll = jnp.sum(jnp.where(w > 0, w * j.log_lik, 0.0))
    return Moments(jnp.sum(w), ll, gram, rhs, yy, jnp.sum(leaf_w, 0), lin), j.leaf_post


def gate_theta(gates: GateParams) -> jax.Array:
    """(G, B, q) softmax gate coefficients with the bias in column 0."""
    return jnp.concatenate([gates.bias[..., None], gates.weight], axis=-1)


def moments_step(spec: ModelSpec, params: HMEParams, mom: Moments, opts: FitOptions) -> HMEParams:
    """New parameters from summed moments: the Gaussian experts' closed-form M-step and every gate's bound step
    (the maximiser of its quadratic minoriser with the ridge)."""
    mask = np.asarray(spec.tree.child_mask, bool)
    experts = moments_m_step(spec, params.experts, mom.gram, mom.rhs, mom.yy, mom.mass, opts)
    q = mom.gram.shape[-1]
    node_gram = jnp.einsum("gl,lij->gij", jnp.asarray(spec.tree.gate_leaf, mom.gram.dtype), mom.gram)
    pen = jnp.broadcast_to(jnp.asarray(opts.gate_alpha, mom.gram.dtype), (q,))
    curv = penalised_curvature(bound_curvature(node_gram, mask), mask, pen)
    free = solve_psd(curv, mom.gate_lin)  # (G, (B-1) q)
    G = free.shape[0]
    theta = jnp.concatenate([jnp.zeros((G, 1, q), free.dtype), free.reshape(G, -1, q)], axis=1)
    return HMEParams(GateParams(theta[..., 0], theta[..., 1:]), experts)


def _chunk(spec, params, X, y, w, resp, opts):
    mom, post = chunk_moments(spec, params, X, y, w, resp)
    return mom, post, penalty(spec, params, opts)


_chunk_jit = jax.jit(_chunk, static_argnums=0)


def moments_of(spec: ModelSpec, params: HMEParams, X, y, w, opts: FitOptions, resp=None):
    """Compiled: (:class:`Moments`, posteriors (c, L), the penalty R(θ) at ``params``) of a chunk; ``resp``
    (c, L) replaces the posteriors as leaf weights (default: none). Every call with the same shapes runs one
    program, whatever ``resp``: a streamed fit compiles this and :data:`solve_moments`, nothing more."""
    if resp is None:
        resp = jnp.full((X.shape[0], spec.tree.n_leaves), -1.0, X.dtype)
    return _chunk_jit(spec, params, X, y, w, resp, opts)


#: compiled :func:`moments_step` (``spec`` static)
solve_moments = jax.jit(moments_step, static_argnums=0)
