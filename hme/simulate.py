r"""Random, exactly specified HMEs with Gaussian experts, and data drawn from HMEs of any regression family.

:func:`random_truth` draws parameters for any tree and gate family so that every gate splits the inputs that
reach it and the experts' regression planes differ; :func:`sample` draws ``(X, y)`` from those parameters:

* softmax and Laplace gates: ``x ~ U[0, 1]^d``; Gaussian gate (one gate): ``z ~ π``, ``x ~ N(c_z, Γ_z)``;
* the leaf ``l ~ π_l(x)`` (the product of the gate probabilities on its path), and
  ``y = a_l + b_lᵀ x + σ_l ε``, ``ε ~ N(0, 1)`` (other families: the expert family's own draws).

:func:`flexmix_k4` draws from one fixed truth: flexmix's K = 4 softmax-gated mixture of linear experts, the
problem of the flexmix benchmark (``benchmarks/bench_flexmix.py``).

These are the truths of the start studies (``tests/test_start.py``, ``benchmarks/bench_start.py``): a fit can
never have a lower log-likelihood than the parameters that generated the data, except by stopping at a worse
stationary point.
"""

from __future__ import annotations

import jax
import numpy as np

from .gates import log_marginal, models_inputs
from .model import gate_path_probs, log_likelihood, make_design
from .params import ExpertParams, GateParams, HMEParams
from .spec import ModelSpec


def _gate_rows(spec: ModelSpec, g: int, rng: np.random.Generator, centre: np.ndarray, d: int, sharpness: float):
    """Bias (B,) and weight (B, d) of gate ``g`` whose children split around ``centre``."""
    B = spec.tree.max_branching
    n_children = int(spec.tree.n_children[g])
    bias, weight = np.zeros(B), np.zeros((B, d))
    if not spec.gate_families[g].locations:
        for c in range(1, n_children):  # child 0 is the reference (w = 0, b = 0)
            u = rng.normal(size=d)
            weight[c] = sharpness * u / np.linalg.norm(u)
            bias[c] = -weight[c] @ centre
    else:  # locations (Laplace keys): points near the centre, inside the unit cube
        spread = 0.25 / (1 + spec.tree.gate_level[g])
        for c in range(n_children):
            weight[c] = np.clip(centre + rng.uniform(-spread, spread, size=d), 0.05, 0.95)
        bias[1:n_children] = rng.normal(scale=0.1, size=n_children - 1)
    return bias, weight


#: the range of the degrees of freedom :func:`random_truth` draws for Student-t experts (clearly heavy tails)
TRUE_DF = (3.0, 8.0)


def random_truth(spec: ModelSpec, rng: np.random.Generator, *, sharpness: float = 12.0,
                 noise: tuple[float, float] = (0.1, 0.3), slope_scale: float = 2.0) -> HMEParams:
    """Random float64 parameters of ``spec`` (Gaussian or Student-t experts, one output).

    Softmax gates: slopes of norm ``sharpness`` in a random direction, splitting at a point of the region the gate
    sees; Laplace gates: keys inside ``[0.05, 0.95]^d`` near that point, biases ~ N(0, 0.1²); Gaussian gate: centres
    ~ U[0.2, 0.8]^d, covariance 0.01·I, equal weights. Experts: intercept ~ N(0, 1), slopes ~ N(0, slope_scale²),
    noise sd (t: scale) ~ U(noise), t degrees of freedom ~ U(TRUE_DF)."""
    if not spec.expert_family.has_cov or spec.n_targets != 1:
        raise ValueError("random_truth draws Gaussian experts with one output")
    t = spec.tree
    d = spec.n_features
    G, B, L = t.n_gates, t.max_branching, t.n_leaves
    bias, weight, cov = np.zeros((G, B)), np.zeros((G, B, d)), None
    if spec.gate_families[0].models_inputs:
        if G != 1:
            raise ValueError("Gaussian gates are one-gate trees")
        k = int(t.n_children[0])
        bias[0, :k] = -np.log(k)
        weight[0, :k] = rng.uniform(0.2, 0.8, size=(k, d))
        cov = np.broadcast_to(0.01 * np.eye(d), (G, B, d, d)).copy()
    else:
        centres = np.zeros((G, d))
        for g in range(G):  # BFS order: a gate's parent comes before it
            if g == 0:
                centres[g] = rng.uniform(0.3, 0.7, size=d)
            else:
                parent = int(t.parent_edge[g]) // B
                centres[g] = np.clip(centres[parent] + rng.uniform(-0.2, 0.2, size=d), 0.2, 0.8)
            bias[g], weight[g] = _gate_rows(spec, g, rng, centres[g], d, sharpness)
    intercept = rng.normal(size=(L, 1))
    coef = rng.normal(scale=slope_scale, size=(L, d, 1))
    var = rng.uniform(*noise, size=L) ** 2
    df = rng.uniform(*TRUE_DF, size=L) if spec.expert_family.has_df else None
    return HMEParams(GateParams(bias, weight, cov), ExpertParams(intercept, coef, var[:, None, None], df))


def sample(spec: ModelSpec, params: HMEParams, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(X (n, d), y)`` drawn from the HME ``params``: y (n,) for one output, (n, m) for several; each row's
    expert draws its target with the expert family's own sampler (Gaussian, Student-t, Poisson)."""
    g, e = params
    d = spec.n_features
    if spec.gate_families[0].models_inputs:
        pi = np.exp(g.bias[0])
        z = rng.choice(pi.size, size=n, p=pi / pi.sum())
        chol = np.linalg.cholesky(g.cov[0])
        X = g.weight[0][z] + np.einsum("nij,nj->ni", chol[z], rng.normal(size=(n, d)))
        leaf = z
    else:
        X = rng.uniform(size=(n, d))
        prob = np.asarray(gate_path_probs(spec, params, X), np.float64)
        cum = np.cumsum(prob / prob.sum(1, keepdims=True), axis=1)
        leaf = np.minimum((rng.uniform(size=(n, 1)) > cum).sum(1), prob.shape[1] - 1)
    with jax.enable_x64(True):  # a host-side float64 draw, whatever the global precision
        means = np.asarray(spec.expert_family.mean(spec, e, make_design(spec, X).expert), np.float64)  # (n, L, m)
    y = spec.expert_family.sample(e, means[np.arange(n), leaf][:, None, :], leaf[:, None], rng)[:, 0, :]
    return X, (y[:, 0] if y.shape[1] == 1 else y)


def total_log_likelihood(spec: ModelSpec, params: HMEParams, X: np.ndarray, y: np.ndarray) -> float:
    """``Σ_t log p(y_t | x_t)`` at ``params``; for a Gaussian gate the joint ``Σ_t log p(x_t, y_t)`` (what EM
    maximises there)."""
    ll = float(np.sum(np.asarray(log_likelihood(spec, params, X, y), np.float64)))
    if models_inputs(spec):
        from .model import make_design

        ll += float(np.sum(np.asarray(log_marginal(spec, make_design(spec, X).gate, params.gates))))
    return ll


#: flexmix's K = 4 model: rows (intercept, x1, x2), one column per expert; the first expert's gate is the reference
FLEXMIX_K4_GATE = np.array([[0.0, 0.5, -0.5, 0.0], [0.0, 2.0, 0.0, -2.0], [0.0, 0.0, 2.0, -2.0]])
FLEXMIX_K4_COEF = np.array([[2.0, -2.0, 0.0, 4.0], [1.0, -1.0, 0.5, 0.0], [0.0, 1.0, -1.0, 2.0]])
FLEXMIX_K4_SD = np.array([0.5, 1.0, 0.3, 0.8])


def flexmix_k4(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, float]:
    r"""Draw from flexmix's K = 4 model: ``x ~ N(0, I_2)``, ``z ~ softmax(Γᵀ[1, x])``,
    ``y = B_zᵀ[1, x] + σ_z ε`` (:data:`FLEXMIX_K4_GATE` Γ, :data:`FLEXMIX_K4_COEF` B, :data:`FLEXMIX_K4_SD` σ).

    Returns
    -------
    X : (n, 2); y : (n,); the true parameters' log-likelihood of the draw, ``Σ_t log p(y_t | x_t)``; and the
    typical noise variance ``exp(Σ_k π̄_k log σ_k²)`` (π̄ the mean gate shares of the draw).
    """
    x = rng.normal(size=(n, 2))
    design = np.column_stack([np.ones(n), x])
    p = np.exp(design @ FLEXMIX_K4_GATE)
    p /= p.sum(1, keepdims=True)
    z = (p.cumsum(1) > rng.random(n)[:, None]).argmax(1)
    sd = FLEXMIX_K4_SD
    y = (design * FLEXMIX_K4_COEF[:, z].T).sum(1) + rng.normal(size=n) * sd[z]
    dens = p * np.exp(-0.5 * ((y[:, None] - design @ FLEXMIX_K4_COEF) / sd) ** 2) / (np.sqrt(2 * np.pi) * sd)
    return x, y, float(np.log(dens.sum(1)).sum()), float(np.exp(p.mean(0) @ np.log(sd**2)))
