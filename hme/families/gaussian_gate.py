r"""Gaussian gates (Xu, Jordan & Hinton 1995): ``log g_c(x) = log π_c + log N(x | c_c, Γ_c) - logsumexp``.

The gate is the posterior of a Gaussian mixture on the inputs, so EM maximises the joint likelihood
``Σ_t log Σ_c π_c N(x_t | c_c, Γ_c) p(y_t | x_t, θ_c)`` and the M-step is closed form:
``π_c ∝ m_c = Σ_t e_tc``, ``c_c = Σ_t e_tc x_t / m_c``, ``Γ_c = (Σ_t e_tc (x_t - c_c)(x_t - c_c)ᵀ + α I) / m_c``
(``α = gate_alpha``: the MAP under the penalty ``½ α tr Γ_c⁻¹``, which keeps Γ_c positive definite). The biases
hold ``log π_c`` (normalised, no reference child); one-gate trees only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import batched_linalg
from ..params import GateParams
from . import register_gate
from .base import GateFamily, GateProblem

#: the LKJ prior's concentration on the gate covariances' correlations (Bayes)
LKJ_CONCENTRATION = 2.0


def gaussian_logits(design: jax.Array, gates: GateParams) -> jax.Array:
    """``log π_c + log N(x_t | c_c, Γ_c)`` for all samples and children, (n, G, B), via Cholesky factors."""
    G, B, p = gates.weight.shape
    factor = batched_linalg.cholesky(gates.cov)  # (G, B, p, p)
    # whitened residuals z = L⁻¹ (x - c): solve with the inverse factor (p is small)
    inv = batched_linalg.lower_inverse(factor)
    chol = factor.lower
    z = jnp.einsum("gbij,nj->ngbi", inv, design) - jnp.einsum("gbij,gbj->gbi", inv, gates.weight)[None]
    half_logdet = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)  # (G, B)
    const = 0.5 * p * jnp.log(2 * jnp.pi)
    return gates.bias[None] - half_logdet[None] - const - 0.5 * jnp.sum(z**2, -1)


def gaussian_m_step(spec, design: jax.Array, edge_w: jax.Array, gate_alpha) -> GateParams:
    """Closed-form maximiser of ``Σ_t Σ_c e_tc log(π_c N(x_t | c_c, Γ_c)) - ½ α Σ_c tr Γ_c⁻¹``."""
    dtype = design.dtype
    mask = jnp.asarray(spec.tree.child_mask)
    p = design.shape[1]
    tiny = jnp.finfo(dtype).tiny
    mass = jnp.sum(edge_w, 0)  # (G, B)
    safe = jnp.maximum(mass, tiny)
    means = jnp.einsum("ngb,np->gbp", edge_w, design) / safe[..., None]
    second = jnp.einsum("ngb,np,nq->gbpq", edge_w, design, design)
    scatter = second - safe[..., None, None] * jnp.einsum("gbp,gbq->gbpq", means, means)
    eye = jnp.eye(p, dtype=dtype)
    alpha = jnp.maximum(jnp.asarray(gate_alpha, dtype), jnp.finfo(dtype).eps)
    cov = (scatter + alpha * eye) / safe[..., None, None]
    cov = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
    log_pi = jnp.log(safe) - jnp.log(jnp.sum(jnp.where(mask, mass, 0.0), -1, keepdims=True))
    return GateParams(jnp.where(mask, log_pi, 0.0), jnp.where(mask[..., None], means, 0.0), cov)


def gaussian_penalty(gates: GateParams, gate_alpha) -> jax.Array:
    """``½ α Σ_c tr Γ_c⁻¹``: the penalty whose MAP gives the covariance update of :func:`gaussian_m_step`."""
    dtype = gates.cov.dtype
    alpha = jnp.maximum(jnp.asarray(gate_alpha, dtype), jnp.finfo(dtype).eps)
    return 0.5 * alpha * jnp.sum(jnp.trace(batched_linalg.inv_psd(gates.cov), axis1=-2, axis2=-1))


class GaussianGate(GateFamily):
    name = "gaussian"
    per_level = False
    closed_form = True
    models_inputs = True
    reference_bias = False
    locations = True
    weight_label = "mean"
    weight_site = "gate_mean"
    voronoi_parameters = ("gate_mean", "gate_cov", "slope", "bias", "var")

    def voronoi_exponents(self, rbar):
        """docs/theory.md §1.5 (S7): gate means at r̄, covariances at r̄/2, expert slopes at 2, expert biases at r̄,
        variances at r̄/2."""
        return {"gate_mean": rbar, "gate_cov": rbar / 2, "slope": 2.0, "bias": rbar, "var": rbar / 2}

    def logits(self, spec, design, gates):
        return gaussian_logits(design, gates)

    def m_step(self, spec, gates, problem: GateProblem):
        return gaussian_m_step(spec, problem.design, problem.edge_w, problem.gate_alpha)

    def penalty(self, gates, gate_alpha):
        return gaussian_penalty(gates, gate_alpha)

    def zeros(self, G, B, p, dtype):
        cov = jnp.broadcast_to(jnp.eye(p, dtype=dtype), (G, B, p, p))
        return GateParams(jnp.zeros((G, B), dtype), jnp.zeros((G, B, p), dtype), cov)

    def n_parameters(self, n_children, p):
        return (n_children - 1) + n_children * (p + p * (p + 1) // 2)  # weights, means, covariances

    def log_marginal(self, spec, design, gates):
        logits = gaussian_logits(design, gates)[:, 0, :]
        mask = jnp.asarray(spec.tree.child_mask)[0]
        return jax.scipy.special.logsumexp(jnp.where(mask[None], logits, -jnp.inf), axis=-1)

    def extra_unconstrained(self, gates):
        return {"gate_cov": batched_linalg.log_cholesky(gates.cov, jnp.zeros(gates.cov.shape[-1], gates.cov.dtype))}

    def constrain(self, bias_free, bias_mask, u):
        bias = jnp.where(bias_mask, jax.nn.log_softmax(jnp.where(bias_mask, bias_free, -jnp.inf), axis=-1), 0.0)
        raw = u["gate_cov"]
        return bias, batched_linalg.from_log_cholesky(raw, jnp.zeros(raw.shape[-1], raw.dtype))

    def canonical_rows(self, bias, weight):
        return bias, weight

    # -- Bayes (the joint model of x and y) ---------------------------------------------------------------------
    # log π = log_softmax([0, a]) with a ~ N(0, gate_scale²) (child 0 the reference); means ~ N(0, (key_scale s_j)²)
    # on the centred inputs; per child scales τ_cj ~ HalfNormal(s_j) and, for two or more inputs, an LKJ(2)
    # correlation with Cholesky factor C_c: Γ_c = diag(τ_c) C_c C_cᵀ diag(τ_c)
    def bayes_gates(self, spec, x_sd, priors, dtype) -> GateParams:
        import numpyro
        import numpyro.distributions as dist

        B, p = spec.tree.max_branching, spec.n_gate_features
        logit = numpyro.sample("gate_logit", dist.Normal(0.0, priors.gate_scale).expand([B - 1]).to_event(1))
        mean = numpyro.sample("gate_mean", dist.Normal(0.0, priors.key_scale * x_sd).expand([B, p]).to_event(2))
        tau = numpyro.sample("gate_sd", dist.HalfNormal(x_sd).expand([B, p]).to_event(2))
        corr = (numpyro.sample("gate_corr", dist.LKJCholesky(p, LKJ_CONCENTRATION).expand([B]).to_event(1))
                if p > 1 else None)
        return self.gates_from_sites(spec, {"gate_logit": logit, "gate_mean": mean, "gate_sd": tau, "gate_corr": corr})

    def gates_from_sites(self, spec, sample: dict) -> GateParams:
        logit = jnp.asarray(sample["gate_logit"])
        bias = jax.nn.log_softmax(jnp.concatenate([jnp.zeros(1, logit.dtype), logit]))[None]
        tau = jnp.asarray(sample["gate_sd"])
        chol = tau[..., :, None] * jnp.asarray(sample["gate_corr"]) if tau.shape[-1] > 1 else tau[..., None]
        cov = chol @ jnp.swapaxes(chol, -1, -2)
        return GateParams(bias, jnp.asarray(sample["gate_mean"])[None], cov[None])

    def gate_sites(self, spec, gates: GateParams) -> dict:
        bias, cov = jnp.asarray(gates.bias)[0], jnp.asarray(gates.cov)[0]
        tau = jnp.sqrt(jnp.diagonal(cov, axis1=-2, axis2=-1))  # (B, p)
        out = {"gate_logit": bias[1:] - bias[0], "gate_mean": jnp.asarray(gates.weight)[0], "gate_sd": tau}
        if tau.shape[-1] > 1:
            out["gate_corr"] = jnp.linalg.cholesky(cov / (tau[:, :, None] * tau[:, None, :]))
        return out


GAUSSIAN_GATE = register_gate(GaussianGate())
