r"""Gaussian linear experts: ``y | x, leaf l ~ N(B_lᵀ [1, x], Σ_l)``.

M-step (closed form, all leaves in one batched solve) with a ridge ``diag(α)`` on the slopes (not the
intercept) towards ``T`` (``coef_target``, default 0), measured on a *fixed* noise scale ``S`` (``coef_scale``,
(m, m), default I): the penalty is ``½ Σ_l tr(S⁻¹ (B_l - T)ᵀ diag(α) (B_l - T))``. It is an ECM step: the
coefficients maximise the penalised likelihood given the current ``Σ_l``, then ``Σ_l`` given them,

.. math::  Dᵀ H_l D B_l + α_J (B_l - T) S^{-1} Σ_l = Dᵀ H_l Y,  \qquad
           Σ_l = \frac{Σ_t h_{tl} r_{tl} r_{tl}ᵀ}{Σ_t h_{tl}}

(``H_l`` = diag of leaf posteriors times sample weights, ``α_J`` = diag(0, α) over the design columns). With one
output the first is the ridge solve ``(DᵀH_lD + (Σ_l/S) α_J)⁻¹ (DᵀH_lY + (Σ_l/S) α_J T)``: a leaf as noisy as
``S`` feels ``α`` pseudo-observations of pull, a tighter one fewer. (The conjugate form, the penalty scaled by
``Σ_l⁻¹``, adds ``α (B_l - T)ᵀ(B_l - T)`` to the leaf's scatter instead, and inflates the variance of every leaf
whose slopes differ from ``T`` by more than its noise: ``docs/ridge_cost.md``.) With fixed effects
(``ModelSpec.shared_coef``) the coefficients solve the leaves' equations scaled by ``Σ_l⁻¹`` jointly, shared rows
tied (:func:`hme.families.linear.tied_solve`). ``Σ_l`` is then projected onto ``{Σ ⪰ var_floor}`` (eigenvalue
clipping: the constrained maximiser), restricted to diagonal or spherical forms, or pooled over leaves when shared.
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
from . import register_expert
from .base import ExpertFamily
from .linear import linear_predictor, ridge_columns, slope_deviation, tied_solve

#: the LKJ prior's concentration on the noise correlations of several outputs (2: mildly towards independence)
LKJ_CONCENTRATION = 2.0


def inverse_cholesky(cov):
    """(L⁻¹, log|Σ|) of every covariance in ``cov`` (..., m, m), Σ = L Lᵀ."""
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
        inv_chol, logdet = inverse_cholesky(experts.cov)
        z = jnp.einsum("lij,nlj->nli", inv_chol, r)
        ll = -0.5 * (m * math.log(2 * math.pi) + logdet + jnp.sum(z**2, -1))
    return ll, None


def mean(spec, experts, design):
    return linear_predictor(experts, design)


def ridge_scale_inverse(opts, m, dtype):
    """``S⁻¹`` (m, m) of the ridge's noise scale ``opts.coef_scale`` (identity when None)."""
    scale = getattr(opts, "coef_scale", None)
    if scale is None:
        return jnp.eye(m, dtype=dtype)
    return batched_linalg.inv_psd(jnp.asarray(scale, dtype))


def penalty(spec, experts, alpha, target=None, scale=None):
    """``½ Σ_l tr(S⁻¹ (B_l - T)ᵀ diag(α) (B_l - T))`` over the slopes (T = ``target``, default 0; S = ``scale``
    (m, m), default I)."""
    slopes = slope_deviation(experts.coef, target)  # (L, p, m)
    p, m = slopes.shape[1], slopes.shape[2]
    if p == 0:
        return jnp.zeros((), experts.intercept.dtype)
    a = ridge_columns(alpha, p + 1, slopes.dtype)[1:]
    bb = jnp.einsum("lpi,p,lpj->ij", slopes, a, slopes)
    inv = jnp.eye(m, dtype=slopes.dtype) if scale is None else batched_linalg.inv_psd(jnp.asarray(scale, slopes.dtype))
    return 0.5 * jnp.sum(inv * bb)


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


def m_step(spec, experts, design, y, leaf_w, aux, leaf_gram, opts, solver="newton"):
    return weighted_m_step(spec, experts, design, y, leaf_w, leaf_gram, opts)


def weighted_m_step(spec, experts, design, y, leaf_w, leaf_gram, opts, mass=None):
    """The M-step above with case weights ``leaf_w`` (n, L) and their Grams ``leaf_gram`` (L, q, q); the scatter
    is divided by ``mass`` (L,) (default: the weights' column sums). Student-t experts pass ``h_tl u_tl`` as the
    weights and ``Σ_t h_tl`` as the mass (the ECM step of a scale mixture of normals)."""
    n, q = design.shape
    L = leaf_w.shape[1]
    m = y.shape[1]
    rhs = (design.T @ (leaf_w[:, :, None] * y[:, None, :]).reshape(n, L * m)).reshape(q, L, m).transpose(1, 0, 2)
    th = _coefficients(spec, experts, leaf_gram, rhs, opts)
    r = y[:, None, :] - linear_predictor(ExpertParams(th[:, 0, :], th[:, 1:, :], experts.cov), design)
    scatter = jnp.einsum("nl,nli,nlj->lij", leaf_w, r, r)
    mass = jnp.sum(leaf_w, 0) if mass is None else mass
    return _with_covariance(spec, experts, th, scatter, mass, opts)


def moments_m_step(spec, experts, gram, rhs, yy, mass, opts):
    r"""The M-step from the weighted moments of the data alone (streamed and online EM): ``gram`` (L, q, q)
    ``Σ_t h_tl d_t d_tᵀ``, ``rhs`` (L, q, m) ``Σ_t h_tl d_t y_tᵀ``, ``yy`` (L, m, m) ``Σ_t h_tl y_t y_tᵀ`` and
    ``mass`` (L,) ``Σ_t h_tl``; the residual scatter is ``yy - Bᵀ rhs - rhsᵀ B + Bᵀ gram B``."""
    th = _coefficients(spec, experts, gram, rhs, opts)
    cross = jnp.einsum("lqi,lqj->lij", th, rhs)
    scatter = yy - cross - jnp.swapaxes(cross, 1, 2) + jnp.einsum("lqi,lqr,lrj->lij", th, gram, th)
    return _with_covariance(spec, experts, th, 0.5 * (scatter + jnp.swapaxes(scatter, 1, 2)), mass, opts)


def _coefficients(spec, experts, leaf_gram, rhs, opts):
    """(L, q, m) coefficients maximising the penalised likelihood given the current ``Σ_l`` (module docstring;
    shared rows tied for fixed effects)."""
    L, q, m = rhs.shape
    dtype = rhs.dtype
    pen = ridge_columns(opts.alpha, q, dtype)
    centre = jnp.zeros((q, m), dtype)
    if opts.coef_target is not None:
        centre = centre.at[1:].set(jnp.asarray(opts.coef_target, dtype))
    shared = () if spec is None else spec.shared_rows
    if m == 1:
        c = experts.cov[:, 0, 0] * ridge_scale_inverse(opts, 1, dtype)[0, 0]  # Σ_l / S
        a = leaf_gram + c[:, None, None] * jnp.diag(pen)
        b = rhs + c[:, None, None] * (pen[:, None] * centre)[None]
        if shared:  # fixed effects: a CM-step, each leaf's equations in its precision
            prec = 1.0 / experts.cov[:, 0, 0]
            return tied_solve(prec[:, None, None] * a, prec[:, None, None] * b, shared)
        return solve_psd(a, b)  # (L, q, 1), one batched solve
    # several outputs, the equations times Σ_l⁻¹ (symmetric):
    # (Σ_l⁻¹ ⊗ G_l + S⁻¹ ⊗ α_J) vec B = vec(rhs Σ_l⁻¹ + α_J T S⁻¹), vec B stacking B's columns
    prec = batched_linalg.inv_psd(experts.cov)  # (L, m, m)
    s_inv = ridge_scale_inverse(opts, m, dtype)
    kron = (jnp.einsum("lij,lab->liajb", prec, leaf_gram)
            + jnp.einsum("ij,a,ab->iajb", s_inv, pen, jnp.eye(q, dtype=dtype))[None])
    b = jnp.einsum("laj,lji->lai", rhs, prec) + (pen[:, None] * centre @ s_inv)[None]
    vec = solve_psd(kron.reshape(L, m * q, m * q), jnp.swapaxes(b, 1, 2).reshape(L, m * q, 1))
    return jnp.swapaxes(vec.reshape(L, m, q), 1, 2)


def _with_covariance(spec, experts, th, scatter, mass, opts):
    """New coefficients ``th`` and covariances from the residual ``scatter`` (L, m, m) divided by ``mass`` (L,),
    floored, restricted and (``shared_covariance``) pooled."""
    L, q, m = th.shape
    tiny = jnp.finfo(th.dtype).tiny
    if spec.shared_covariance:
        pooled = jnp.sum(scatter, 0) / jnp.maximum(jnp.sum(mass), tiny)
        cov = jnp.broadcast_to(_floor_cov(pooled, opts.var_floor, spec.covariance_type), (L, m, m))
    else:
        cov = scatter / jnp.maximum(mass, tiny)[:, None, None]
        cov = jax.vmap(lambda c: _floor_cov(c, opts.var_floor, spec.covariance_type))(cov)
    return experts._replace(intercept=th[:, 0, :], coef=th[:, 1:, :], cov=cov)


# -- the predictive distribution (NumPy, float64, on the host) ---------------------------------------------
# ``pi`` (n, L) are gate path probabilities, ``mu`` (n, L, m) the leaves' means, ``experts`` NumPy parameters
# (``experts.cov`` (L, m, m)).


def leaf_variance(experts, mu):
    """Per-leaf variance of each output, (n, L, m): the diagonal of Σ_l."""
    var = np.diagonal(np.asarray(experts.cov, np.float64), axis1=1, axis2=2)  # (L, m)
    return np.broadcast_to(var[None], mu.shape)


def mixture_quantiles(experts, pi, mu, q):
    """Quantiles of the mixture ``Σ_l π_l N(μ_l, σ_l²)`` per output, (n, m, len(q)), by 80 bisection steps on
    its CDF inside ``[min_l μ_l - 12σ_l, max_l μ_l + 12σ_l]`` (width / 2⁸⁰: exact to rounding)."""
    sd = np.sqrt(leaf_variance(experts, mu))

    def cdf(yv):  # (n, m, Q) -> (n, m, Q)
        return np.einsum("nl,nlkq->nkq", pi, ndtr((yv[:, None] - mu[..., None]) / sd[..., None]))

    lo = (mu - 12 * sd).min(1)[..., None] * np.ones_like(q)
    hi = (mu + 12 * sd).max(1)[..., None] * np.ones_like(q)
    return bisect_quantiles(cdf, q, lo, hi)


def bisect_quantiles(cdf, q, lo, hi, steps: int = 80):
    """The levels ``q`` of a continuous, increasing ``cdf`` (arrays (n, m, Q) -> (n, m, Q)) by ``steps`` bisection
    steps inside the bracket ``[lo, hi]`` (n, m, Q)."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def sample(experts, means, leaf, rng):
    """Draws ``N(means, Σ_leaf)``: ``means`` (n, S, m), ``leaf`` (n, S) leaf indices -> (n, S, m)."""
    chol = np.linalg.cholesky(np.asarray(experts.cov, np.float64))[leaf]  # (n, S, m, m)
    return means + np.einsum("nsij,nsj->nsi", chol, rng.normal(size=means.shape))


class GaussianExpert(ExpertFamily):
    name = "gaussian"
    has_cov = True
    closed_form = True
    uses_gram = True
    supports_shared_coef = True

    def log_prob(self, spec, experts, design, y):
        return log_prob(spec, experts, design, y)

    def mean(self, spec, experts, design):
        return mean(spec, experts, design)

    def penalty(self, spec, experts, alpha, target=None, scale=None):
        return penalty(spec, experts, alpha, target, scale)

    def m_step(self, spec, experts, design, y, leaf_w, aux, leaf_gram, opts, solver="newton"):
        return m_step(spec, experts, design, y, leaf_w, aux, leaf_gram, opts)

    # the predictive distribution: the module's NumPy functions above
    leaf_variance = staticmethod(leaf_variance)
    mixture_quantiles = staticmethod(mixture_quantiles)
    sample = staticmethod(sample)

    def pooled_fit(self, D, y, w, pen, n_targets):
        """Weighted ridge least squares, ``(Dᵀ W D + diag pen)⁻¹ Dᵀ W Y`` (NumPy float64)."""
        n = D.shape[0]
        Y = np.asarray(y, np.float64).reshape(n, -1)
        G = D.T @ (w[:, None] * D) + np.diag(pen)
        return np.linalg.lstsq(G, D.T @ (w[:, None] * Y), rcond=None)[0]

    def n_noise_parameters(self, spec):
        m = spec.n_targets
        per = {"full": m * (m + 1) // 2, "diag": m, "spherical": 1}[spec.covariance_type]
        return per * (1 if spec.shared_covariance else spec.tree.n_leaves)

    def extra_unconstrained(self, spec, experts, var_floor):
        """``Σ - diag(floor)`` as a log-Cholesky factor (full), log excess variances (diag) or one log excess
        variance (spherical); one copy when the covariance is shared."""
        cov = experts.cov[:1] if spec.shared_covariance else experts.cov
        tiny = 1e-3 * jnp.max(var_floor)
        if spec.covariance_type == "full":
            return {"cov": batched_linalg.log_cholesky(cov, var_floor)}
        if spec.covariance_type == "diag":
            return {"cov": jnp.log(jnp.maximum(jnp.diagonal(cov, axis1=-2, axis2=-1) - var_floor, tiny))}
        v = jnp.mean(jnp.diagonal(cov, axis1=-2, axis2=-1), -1, keepdims=True)
        return {"cov": jnp.log(jnp.maximum(v - jnp.max(var_floor), tiny))}

    def constrained_cov(self, spec, u, var_floor):
        m = spec.n_targets
        eye = jnp.eye(m, dtype=var_floor.dtype)
        if spec.covariance_type == "full":
            cov = batched_linalg.from_log_cholesky(u["cov"], var_floor)
        elif spec.covariance_type == "diag":
            cov = (var_floor + jnp.exp(u["cov"]))[..., None] * eye
        else:
            cov = (jnp.max(var_floor) + jnp.exp(u["cov"]))[..., None] * eye
        return jnp.broadcast_to(cov, (spec.tree.n_leaves, m, m))

    # Bayes: per leaf and output a scale σ_lj ~ HalfNormal(noise_scale · sd(y_j)) (site "sigma", (L,) for one
    # output); several outputs add an LKJ(2) correlation per leaf (Cholesky factor C_l, site "noise_corr"),
    # Σ_l = diag(σ_l) C_l C_lᵀ diag(σ_l)
    def bayes_noise(self, spec, scale, priors):
        import numpyro
        import numpyro.distributions as dist

        L, m = spec.tree.n_leaves, spec.n_targets
        if m == 1:
            sigma = numpyro.sample("sigma", dist.HalfNormal(priors.noise_scale * scale.y_sd).expand([L]).to_event(1))
            return {"cov": (sigma**2)[:, None, None]}
        y_sd = jnp.broadcast_to(jnp.asarray(scale.y_sd), (m,))
        sigma = numpyro.sample("sigma", dist.HalfNormal(priors.noise_scale * y_sd).expand([L, m]).to_event(2))
        corr = numpyro.sample("noise_corr", dist.LKJCholesky(m, LKJ_CONCENTRATION).expand([L]).to_event(1))
        chol = sigma[:, :, None] * corr
        return {"cov": chol @ jnp.swapaxes(chol, -1, -2)}

    def bayes_likelihood(self, spec, log_pi, eta, experts):
        import numpyro.distributions as dist

        mix = dist.Categorical(logits=log_pi)
        if spec.n_targets == 1:
            return dist.MixtureSameFamily(mix, dist.Normal(eta[..., 0], jnp.sqrt(experts.cov[:, 0, 0])))
        return dist.MixtureSameFamily(mix, dist.MultivariateNormal(eta, scale_tril=jnp.linalg.cholesky(experts.cov)))

    def noise_sites(self, spec, experts):
        cov = jnp.asarray(experts.cov)
        sigma = jnp.sqrt(jnp.diagonal(cov, axis1=-2, axis2=-1))  # (L, m)
        if spec.n_targets == 1:
            return {"sigma": sigma[:, 0]}
        corr = cov / (sigma[:, :, None] * sigma[:, None, :])
        return {"sigma": sigma, "noise_corr": jnp.linalg.cholesky(corr)}

    def noise_from_sites(self, spec, sample):
        sigma = jnp.asarray(sample["sigma"])
        if spec.n_targets == 1:
            return {"cov": (sigma**2)[..., None, None]}
        chol = sigma[..., :, None] * jnp.asarray(sample["noise_corr"])
        return {"cov": chol @ jnp.swapaxes(chol, -1, -2)}


GAUSSIAN = register_expert(GaussianExpert())
