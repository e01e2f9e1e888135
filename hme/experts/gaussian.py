r"""Gaussian linear experts: ``y | x, leaf l ~ N(B_lᵀ [1, x], Σ_l)``.

M-step (closed form, all leaves in one batched solve), with ridge α on the slopes (not the intercept) and the
penalty ``-(α/2) tr(Σ_l⁻¹ B_sᵀ B_s)`` (a conjugate matrix-normal prior), so that

.. math::  B_l = (Dᵀ H_l D + α J)^{-1} Dᵀ H_l Y,  \qquad
           Σ_l = \frac{Σ_t h_{tl} r_{tl} r_{tl}ᵀ + α B_{s}ᵀ B_{s}}{Σ_t h_{tl}}

(``H_l`` = diag of leaf posteriors times sample weights, ``J`` = diag(0, 1, ..., 1)). ``Σ_l`` is then projected
onto ``{Σ ⪰ var_floor}`` (eigenvalue clipping: the constrained maximiser), restricted to diagonal or
spherical forms, or pooled over leaves when shared.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtr

from .. import batched_linalg
from .._linalg import solve_psd
from ..params import ExpertParams
from ._linear import linear_predictor, ridge_columns, slope_deviation


def _chol_inverse(cov):
    factor = batched_linalg.cholesky(cov)
    return batched_linalg.lower_inverse(factor), batched_linalg.logdet(factor)


def log_prob(spec, experts, design, y):
    mean = linear_predictor(experts, design)  # (n, L, m)
    r = y[:, None, :] - mean
    m = y.shape[1]
    if m == 1:
        var = experts.cov[:, 0, 0]
        ll = -0.5 * (math.log(2 * math.pi) + jnp.log(var) + r[..., 0] ** 2 / var)
    else:
        inv_chol, logdet = _chol_inverse(experts.cov)
        z = jnp.einsum("lij,nlj->nli", inv_chol, r)
        ll = -0.5 * (m * math.log(2 * math.pi) + logdet + jnp.sum(z**2, -1))
    return ll, None


def mean(spec, experts, design):
    return linear_predictor(experts, design)


def penalty(spec, experts, alpha, target=None):
    """``½ Σ_l tr(Σ_l⁻¹ (B_l - T)ᵀ diag(α) (B_l - T))`` over the slopes (T = ``target``, default 0)."""
    slopes = slope_deviation(experts.coef, target)  # (L, p, m)
    p = slopes.shape[1]
    if p == 0:
        return jnp.zeros((), experts.intercept.dtype)
    a = ridge_columns(alpha, p + 1, slopes.dtype)[1:]
    bb = jnp.einsum("lpi,p,lpj->lij", slopes, a, slopes)
    prec = batched_linalg.inv_psd(experts.cov)
    return 0.5 * jnp.einsum("lij,lji->", prec, bb)


def _floor_cov(cov, var_floor, kind):
    """Project covariances onto {Σ ⪰ diag(var_floor)} in the family ``kind``."""
    m = cov.shape[-1]
    if kind == "spherical":
        v = jnp.trace(cov, axis1=-2, axis2=-1) / m
        v = jnp.maximum(v, jnp.max(var_floor))
        return v[..., None, None] * jnp.eye(m, dtype=cov.dtype)
    if kind == "diag" or m == 1:
        v = jnp.maximum(jnp.diagonal(cov, axis1=-2, axis2=-1), var_floor)
        return jax.vmap(jnp.diag)(v) if cov.ndim == 3 else jnp.diag(v)
    # full: scale to unit floor, clip eigenvalues at 1, scale back (exact for a common floor):
    # V max(Λ, 1) Vᵀ = (C + I + |C - I|) / 2, with |·| from matrix products (no eigensolver)
    s = jnp.sqrt(var_floor)
    c = cov / (s[:, None] * s[None, :])
    eye = jnp.eye(m, dtype=cov.dtype)
    c = 0.5 * (c + eye + batched_linalg.matrix_abs(c - eye))
    return c * (s[:, None] * s[None, :])


def m_step(spec, experts, design, y, leaf_w, aux, leaf_gram, opts):
    n, q = design.shape
    L = leaf_w.shape[1]
    m = y.shape[1]
    dtype = design.dtype
    pen = ridge_columns(opts.alpha, q, dtype)
    rhs = (design.T @ (leaf_w[:, :, None] * y[:, None, :]).reshape(n, L * m)).reshape(q, L, m).transpose(1, 0, 2)
    if opts.coef_target is not None:  # ridge towards T: (G + P) B = Dᵀ H y + P T
        pull = pen[1:, None] * jnp.asarray(opts.coef_target, dtype)  # (p, m)
        rhs = rhs + jnp.concatenate([jnp.zeros((1, m), dtype), pull], 0)[None]
    th = solve_psd(leaf_gram + jnp.diag(pen), rhs)  # (L, q, m), one batched solve
    new = ExpertParams(th[:, 0, :], th[:, 1:, :], experts.cov)
    r = y[:, None, :] - linear_predictor(new, design)
    scatter = jnp.einsum("nl,nli,nlj->lij", leaf_w, r, r)
    dev = slope_deviation(th[:, 1:, :], opts.coef_target)
    scatter = scatter + jnp.einsum("lpi,p,lpj->lij", dev, pen[1:], dev)
    mass = jnp.sum(leaf_w, 0)
    tiny = jnp.finfo(dtype).tiny
    if spec.shared_covariance:
        pooled = jnp.sum(scatter, 0) / jnp.maximum(jnp.sum(mass), tiny)
        cov = jnp.broadcast_to(_floor_cov(pooled, opts.var_floor, spec.covariance_type), (L, m, m))
    else:
        cov = scatter / jnp.maximum(mass, tiny)[:, None, None]
        cov = jax.vmap(lambda c: _floor_cov(c, opts.var_floor, spec.covariance_type))(cov)
    return ExpertParams(new.intercept, new.coef, cov)



# -- the predictive distribution (NumPy, float64, on the host) ---------------------------------------------
# ``pi`` (n, L) are gate path probabilities, ``mu`` (n, L, m) the leaves' means, ``cov`` (L, m, m) NumPy.


def leaf_variance(cov, mu):
    """Per-leaf variance of each output, (n, L, m): the diagonal of Σ_l."""
    var = np.diagonal(np.asarray(cov, np.float64), axis1=1, axis2=2)  # (L, m)
    return np.broadcast_to(var[None], mu.shape)


def mixture_quantiles(cov, pi, mu, q):
    """Quantiles of the mixture ``Σ_l π_l N(μ_l, σ_l²)`` per output, (n, m, len(q)), by 80 bisection steps on
    its CDF inside ``[min_l μ_l - 12σ_l, max_l μ_l + 12σ_l]`` (width / 2⁸⁰: exact to rounding)."""
    sd = np.sqrt(leaf_variance(cov, mu))

    def cdf(yv):  # (n, m, Q) -> (n, m, Q)
        return np.einsum("nl,nlkq->nkq", pi, ndtr((yv[:, None] - mu[..., None]) / sd[..., None]))

    lo = (mu - 12 * sd).min(1)[..., None] * np.ones_like(q)
    hi = (mu + 12 * sd).max(1)[..., None] * np.ones_like(q)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def sample(cov, means, leaf, rng):
    """Draws ``N(means, Σ_leaf)``: ``means`` (n, S, m), ``leaf`` (n, S) leaf indices -> (n, S, m)."""
    chol = np.linalg.cholesky(np.asarray(cov, np.float64))[leaf]  # (n, S, m, m)
    return means + np.einsum("nsij,nsj->nsi", chol, rng.normal(size=means.shape))
