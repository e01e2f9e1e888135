r"""Softmax gates: ``log g_{g,c}(x) = w_{g,c}·x + b_{g,c} - logsumexp_c'(...)`` (multinomial logit), child 0 the
reference (``w_{g,0} = 0, b_{g,0} = 0``).

M-step: the weighted multinomial logit with soft targets (edge posteriors) and case weights (node posteriors),
one warm-started Newton step with halving, or the bound-optimisation step (:mod:`hme._logit`). The ridge
``½ α Σ θ²`` covers biases and slopes; ``α`` may be one value per design column (bias, then slopes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._logit import logit_m_step, unit_logits
from ..params import GateParams
from . import register_gate
from .base import GateFamily, GateProblem


def theta(gates: GateParams) -> jax.Array:
    """(G, B, 1 + p) with the bias in column 0."""
    return jnp.concatenate([gates.bias[..., None], gates.weight], axis=-1)


class SoftmaxGate(GateFamily):
    name = "softmax"
    intercept = True
    reference_weight = True
    uses_node_gram = True
    penalise_weight = True
    weight_label = "coef"
    weight_site = "gate_weight"
    voronoi_parameters = ("gate", "slope", "bias", "var")

    def voronoi_exponents(self, rbar):
        """docs/theory.md §1.5 (S3, Nguyen, Nguyen & Ho 2023): gate slopes and expert biases at r̄, expert slopes and
        variances at r̄/2."""
        return {"gate": rbar, "slope": rbar / 2, "bias": rbar, "var": rbar / 2}

    def logits(self, spec, design, gates):
        return unit_logits(design, theta(gates))

    def m_step(self, spec, gates, problem: GateProblem):
        q = problem.design.shape[1]
        penalty = jnp.broadcast_to(jnp.asarray(problem.gate_alpha, problem.design.dtype), (q,))
        th = logit_m_step(problem.design, theta(gates), problem.log_prob, problem.edge_w, problem.node_w,
                          problem.mask, penalty, problem.solver, problem.node_gram, problem.hessian_gram)
        return GateParams(th[..., 0], th[..., 1:])

    def penalty(self, gates, gate_alpha):
        if jnp.ndim(gate_alpha) == 1:  # per design column: bias, then slopes
            return 0.5 * (gate_alpha[0] * jnp.sum(gates.bias**2) + jnp.sum(gates.weight**2 * gate_alpha[1:]))
        return super().penalty(gates, gate_alpha)


SOFTMAX = register_gate(SoftmaxGate())
