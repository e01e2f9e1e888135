r"""Laplace gates (FuseMoE, docs/theory.md §1.2): ``log g_{g,c}(x) = -‖W_{g,c} - x‖_ε + b_{g,c} - logsumexp``, with
the smoothed distance ``‖v‖_ε = sqrt(‖v‖² + ε²)`` (ε = ``spec.laplace_smoothing``) and keys ``W`` in input space.

M-step: modified Newton (the negative Hessian replaced by its absolute value, floored) with step halving on the
weighted soft-target objective, keys confined to the box of the rows that reach their gate
(:func:`reach_box`, :func:`project_keys`). The ridge covers the biases only: keys are locations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import batched_linalg
from .._linalg import CHUNK, newton_ascent
from .._logit import masked_log_softmax
from ..params import GateParams
from . import register_gate
from .base import GateFamily, GateProblem


def laplace_sq_distance(design: jax.Array, keys: jax.Array) -> jax.Array:
    """‖x_t - W_{g,c}‖² for all samples and keys, (n, G, B), via one GEMM (clamped at 0 against roundoff)."""
    G, B, p = keys.shape
    cross = (design @ keys.reshape(G * B, p).T).reshape(design.shape[0], G, B)
    sq = jnp.sum(design**2, axis=1)[:, None, None] - 2.0 * cross + jnp.sum(keys**2, axis=-1)[None]
    return jnp.maximum(sq, 0.0)


def laplace_logits(spec, design: jax.Array, gates: GateParams) -> jax.Array:
    eps = jnp.asarray(spec.laplace_smoothing, design.dtype)
    return -jnp.sqrt(laplace_sq_distance(design, gates.weight) + eps**2) + gates.bias[None]


#: A row reaches a gate when its posterior there is at least this fraction of the largest posterior at that gate.
REACH = 0.5
#: With two or more gate inputs, keys may sit this fraction of the reaching rows' range outside it, per coordinate:
#: a key just outside the data still shapes the gate (far outside, it only shifts the bias). With one input a key
#: outside the data is exactly a key on its edge with a shifted bias, so there is no margin.
KEY_MARGIN = 0.5


def reach_box(design: jax.Array, node_w: jax.Array, root_w: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    r"""Lower and upper corners, each (n_gates, p), of the box a Laplace gate's keys are kept in: the bounding box
    of the rows that reach the gate, widened by ``KEY_MARGIN`` times its range on each side when there are two or
    more gate inputs.

    With h_tg = node_w_tg / node_w_t0 the posterior of gate g (gate 0 is the root, whose mass is the sample
    weight), row t reaches g when h_tg >= REACH · max_s h_sg. A gate no row reaches gets the whole space.
    Far outside its rows a key's distance to them is nearly affine in the key (exactly, in one dimension), so the
    key trades off against its bias along a flat direction and can run off; keys are kept in the box
    (:func:`project_keys`)."""
    root = node_w[:, :1] if root_w is None else root_w[:, None]
    h = jnp.where(root > 0, node_w / jnp.maximum(root, jnp.finfo(design.dtype).tiny), 0.0)
    reach = (h >= REACH * jnp.max(h, axis=0, keepdims=True)) & (h > 0)  # (n, G)

    def corners(r):  # one gate at a time: no (n, G, p) array
        lo = jnp.min(jnp.where(r[:, None], design, jnp.inf), axis=0)
        hi = jnp.max(jnp.where(r[:, None], design, -jnp.inf), axis=0)
        return lo, hi

    lo, hi = jax.lax.map(corners, reach.T)
    margin = KEY_MARGIN if design.shape[1] > 1 else 0.0
    width = jnp.where(jnp.isfinite(hi - lo), hi - lo, 0.0)
    return lo - margin * width, hi + margin * width


def _laplace_objective(spec, design, gates, edge_w, gate_alpha, mask):
    logp = masked_log_softmax(laplace_logits(spec, design, gates), mask)
    return jnp.einsum("ngb,ngb->g", edge_w, logp) - 0.5 * gate_alpha * jnp.sum(gates.bias**2, -1)


def _laplace_grad_hess(spec, design, gates, log_prob, edge_w, node_w, mask):
    r"""Gradient and Hessian of Σ_t Σ_c e_tc log g_c per gate, parameters φ_c = (b_c, W_c) per child.

    With u_tc = (W_c - x_t)/d_tc and J_tc = (1, -u_tc) the Jacobian of the logit,
    H = -Σ_t n_t Σ_{c,c'} (δ p_c - p_c p_c') J_tc J_tc'ᵀ  -  Σ_t Σ_c r_tc (I - u u ᵀ)/d_tc  (W-block only),
    r_tc = e_tc - n_t p_tc. Accumulated over blocks of rows (no (n, G, B, p, p) array).
    """
    G, B, p = gates.weight.shape
    eps = jnp.asarray(spec.laplace_smoothing, design.dtype)
    n = design.shape[0]
    chunk = min(CHUNK, n)
    pad = (-n) % chunk

    def padrows(a):
        return jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)) if pad else a

    xs = [padrows(a) for a in (design, log_prob, edge_w, node_w)]
    xs = [a.reshape((-1, chunk) + a.shape[1:]) for a in xs]
    P = p + 1
    eye_p = jnp.eye(p, dtype=design.dtype)

    def block(x, logp, e, nw):
        v = gates.weight[None] - x[:, None, None, :]  # (c, G, B, p)
        d = jnp.sqrt(jnp.sum(v**2, -1) + eps**2)  # (c, G, B)
        u = v / d[..., None]
        prob = jnp.where(mask[None], jnp.exp(logp), 0.0)
        r = e - nw[..., None] * prob  # (c, G, B)
        J = jnp.concatenate([jnp.ones(u.shape[:-1] + (1,), u.dtype), -u], -1)  # (c, G, B, P)
        grad = jnp.einsum("ngb,ngbi->gbi", r, J)
        A = nw[..., None, None] * (
            prob[..., :, None] * jnp.eye(B, dtype=x.dtype) - prob[..., :, None] * prob[..., None, :]
        )
        h1 = -jnp.einsum("ngbc,ngbi,ngcj->gbicj", A, J, J)
        rd = r / d
        h2w = -(jnp.einsum("ngb->gb", rd)[..., None, None] * eye_p - jnp.einsum("ngb,ngbi,ngbj->gbij", rd, u, u))
        return grad, h1, h2w

    def body(acc, xs_):
        g, h1, h2 = block(*xs_)
        return (acc[0] + g, acc[1] + h1, acc[2] + h2), None

    zeros = (
        jnp.zeros((G, B, P), design.dtype),
        jnp.zeros((G, B, P, B, P), design.dtype),
        jnp.zeros((G, B, p, p), design.dtype),
    )
    (grad, h1, h2w), _ = jax.lax.scan(body, zeros, tuple(xs))
    hess = h1 + jnp.einsum(
        "gbij,bc->gbicj", jnp.pad(h2w, ((0, 0), (0, 0), (1, 0), (1, 0))), jnp.eye(B, dtype=design.dtype)
    )
    return grad, hess


def project_keys(step, keys, box, curv, grad, mask):
    r"""Projected Newton step (Bertsekas 1982) for keys confined to ``box``: key coordinates whose step would leave
    the box are set onto its face, and the other coordinates (biases included) re-solve the Newton system with
    those held fixed, ``M_FF s_F = g_F - M_FA s_A``, so a bias absorbs what its clipped key could not move.

    step (G, B, P) with P = 1 + p (bias first); keys (G, B, p); curv (G, BP, BP) positive definite; grad (G, BP)."""
    G, B, P = step.shape
    lo, hi = box
    target = jnp.clip(keys + step[..., 1:], lo[:, None], hi[:, None])
    active = (target != keys + step[..., 1:]) & jnp.asarray(mask)[..., None]  # (G, B, p)
    active = jnp.concatenate([jnp.zeros((G, B, 1), bool), active], -1).reshape(G, B * P)
    fixed = jnp.concatenate([jnp.zeros((G, B, 1), step.dtype), target - keys], -1).reshape(G, B * P)
    fixed = jnp.where(active, fixed, 0.0)
    rhs = jnp.where(active, fixed, grad - jnp.einsum("gij,gj->gi", curv, fixed))
    either = active[:, :, None] | active[:, None, :]
    eye = jnp.eye(B * P, dtype=step.dtype)
    projected = batched_linalg.solve_psd(jnp.where(either, eye, curv), rhs)
    projected = jnp.where(jnp.isfinite(projected), projected, 0.0).reshape(G, B, P)
    # a re-solved free key coordinate may itself cross the box: clip it too (one projection pass, not iterated)
    moved = jnp.clip(keys + projected[..., 1:], lo[:, None], hi[:, None]) - keys
    return projected.at[..., 1:].set(jnp.where(jnp.asarray(mask)[..., None], moved, 0.0))


def _laplace_m_step(spec, gates, design, log_prob, edge_w, node_w, gate_alpha, mask, box):
    """One modified Newton step with halving for every Laplace gate; the step's keys are projected onto ``box``
    (:func:`reach_box`), so a key cannot leave the rows that reach its gate (the halving path stays in the box,
    which is convex, from a key inside it)."""
    G, B, p = gates.weight.shape
    P = p + 1
    dtype = design.dtype
    grad, hess = _laplace_grad_hess(spec, design, gates, log_prob, edge_w, node_w, mask)
    # ridge on the biases
    grad = grad.at[..., 0].add(-gate_alpha * gates.bias)
    hess = hess - gate_alpha * jnp.einsum("bc,ij->bicj", jnp.eye(B, dtype=dtype), jnp.diag(jnp.eye(P, dtype=dtype)[0]))
    # free parameters: existing children; the reference child's bias is fixed at 0
    free = jnp.broadcast_to(jnp.asarray(mask)[:, :, None], (G, B, P)).at[:, 0, 0].set(False)
    grad = jnp.where(free, grad, 0.0).reshape(G, B * P)
    neg = -hess.reshape(G, B * P, B * P)
    f2 = free.reshape(G, B * P)
    both = f2[:, :, None] & f2[:, None, :]
    neg = jnp.where(both, neg, 0.0) + jax.vmap(jnp.diag)(jnp.where(f2, 0.0, 1.0).astype(dtype))
    neg = 0.5 * (neg + jnp.swapaxes(neg, 1, 2))
    # Saddle-free modification: directions of negative curvature (the distance is not concave) keep their
    # scale |λ| instead of being clipped to a tiny floor, which would produce huge steps that halving rejects:
    # step = (|H| + δ I)⁻¹ g with |H| = V |Λ| Vᵀ (matrix products only, no eigensolver) and δ = 1e-4 ‖H‖_F.
    scale = jnp.sqrt(jnp.sum(neg * neg, axis=(-2, -1)))
    floor = 1e-4 * scale + jnp.finfo(dtype).tiny ** 0.5
    curv = batched_linalg.matrix_abs(neg) + floor[:, None, None] * jnp.eye(B * P, dtype=dtype)
    step = batched_linalg.solve_psd(curv, grad)
    step = jnp.where(jnp.isfinite(step), step, 0.0).reshape(G, B, P)
    step = project_keys(step, gates.weight, box, curv, grad, mask)
    theta = jnp.concatenate([gates.bias[..., None], gates.weight], -1)
    f0 = jnp.einsum("ngb,ngb->g", edge_w, log_prob) - 0.5 * gate_alpha * jnp.sum(gates.bias**2, -1)
    obj = lambda th: _laplace_objective(spec, design, GateParams(th[..., 0], th[..., 1:]), edge_w, gate_alpha, mask)
    theta, _ = newton_ascent(theta, step, obj, f0)
    return GateParams(theta[..., 0], theta[..., 1:])


class LaplaceGate(GateFamily):
    name = "laplace"
    locations = True
    reseeds = True
    weight_label = "key"
    weight_site = "gate_key"
    voronoi_parameters = ("gate", "slope", "bias", "var")

    def voronoi_exponents(self, rbar):
        """docs/theory.md §1.5 (S2, FuseMoE): keys and expert slopes at 2 whatever the over-fit; expert biases at r̄,
        variances at r̄/2."""
        return {"gate": 2.0, "slope": 2.0, "bias": rbar, "var": rbar / 2}

    def logits(self, spec, design, gates):
        return laplace_logits(spec, design, gates)

    def m_step(self, spec, gates, problem: GateProblem):
        box = reach_box(problem.design, problem.node_w, problem.root_w)
        return _laplace_m_step(spec, gates, problem.design, problem.log_prob, problem.edge_w, problem.node_w,
                               problem.gate_alpha, problem.mask, box)

    def weight_prior_sd(self, x_sd, priors):
        return priors.key_scale * x_sd  # keys live in input space; the inputs are centred


LAPLACE = register_gate(LaplaceGate())
