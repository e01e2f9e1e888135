r"""Student-t linear experts: ``y | x, leaf l ~ t_{ν_l}(B_lᵀ [1, x], Σ_l)``, robust mixtures of regressions.

The t is a scale mixture of normals, ``y | τ ~ N(μ, Σ/τ)`` with ``τ ~ Gamma(ν/2, ν/2)``, so EM can treat τ as
missing as well (ECM: Liu & Rubin 1995; Peel & McLachlan 2000, "Robust mixture modelling using the t
distribution"; for mixtures of experts Chamroukhi 2016, "Robust mixture of experts modeling using the
t-distribution"). At the current parameters, with ``δ²_tl = (y_t - μ_tl)ᵀ Σ_l⁻¹ (y_t - μ_tl)`` and m outputs:

.. math::  u_{tl} = E[τ \mid y_t, l] = \frac{ν_l + m}{ν_l + δ²_{tl}}, \qquad
           E[\log τ \mid y_t, l] = \log u_{tl} + ψ(\tfrac{ν_l + m}{2}) - \log\tfrac{ν_l + m}{2}.

CM-step 1 is the Gaussian M-step with case weights ``h_tl u_tl`` and the scatter divided by ``Σ_t h_tl``
(:func:`hme.families.gaussian.weighted_m_step`): a row far from its expert (small u) pulls the fit less. CM-step 2
solves, for each leaf,

.. math::  \log\tfrac{ν}{2} - ψ(\tfrac{ν}{2}) + 1 + \frac{Σ_t h_{tl} (E[\log τ] - u_{tl})}{Σ_t h_{tl}} = 0

by bisection on log ν in [:data:`DF_MIN`, :data:`DF_MAX`] (the left side falls with ν; at ``DF_MAX`` the expert is
Gaussian in all but name). Each CM-step maximises the expected complete-data log-likelihood over its block, so the
observed likelihood never decreases. ``ModelSpec.expert_df`` fixes ν instead of estimating it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln
from scipy import stats

from .._linalg import weighted_gram
from . import register_expert
from .gaussian import GaussianExpert, bisect_quantiles, inverse_cholesky, weighted_m_step
from .linear import linear_predictor

#: bounds of the estimated degrees of freedom (ν = 0.5: tails heavier than Cauchy; ν = 200: nearly Gaussian)
DF_MIN = 0.5
DF_MAX = 200.0
#: degrees of freedom of every random start (the first ECM steps move them)
DF_START = 10.0
#: the Bayesian prior ν ~ Gamma(shape, rate)
DF_PRIOR_SHAPE = 2.0
DF_PRIOR_RATE = 0.1
#: bisection steps on log ν (the bracket shrinks by 2⁻⁶⁰: exact to rounding)
DF_BISECTIONS = 60


def scaled_distance(experts, design, y):
    """(δ² (n, L), log|Σ_l| (L,)): squared Mahalanobis distances of the targets from every leaf's mean."""
    r = y[:, None, :] - linear_predictor(experts, design)
    if y.shape[1] == 1:
        var = experts.cov[:, 0, 0]
        return r[..., 0] ** 2 / var, jnp.log(var)
    inv_chol, logdet = inverse_cholesky(experts.cov)
    z = jnp.einsum("lij,nlj->nli", inv_chol, r)
    return jnp.sum(z**2, -1), logdet


def log_prob(spec, experts, design, y):
    """log t_ν(y | μ, Σ) per row and leaf, and δ² for the M-step."""
    d2, logdet = scaled_distance(experts, design, y)
    m = y.shape[1]
    nu = experts.df
    ll = (gammaln(0.5 * (nu + m)) - gammaln(0.5 * nu) - 0.5 * m * jnp.log(nu * jnp.pi) - 0.5 * logdet
          - 0.5 * (nu + m) * jnp.log1p(d2 / nu))
    return ll, d2


def solve_df(c: jax.Array) -> jax.Array:
    """ν (L,) solving ``log(ν/2) - ψ(ν/2) + c = 0``, by bisection on log ν within [DF_MIN, DF_MAX] (a root
    beyond a bound gives the bound)."""

    def f(log_nu):
        return log_nu - jnp.log(2.0) - digamma(0.5 * jnp.exp(log_nu)) + c

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        up = f(mid) > 0  # f falls with ν: the root lies above mid
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    lo = jnp.full(c.shape, np.log(DF_MIN), c.dtype)
    hi = jnp.full(c.shape, np.log(DF_MAX), c.dtype)
    lo, hi = jax.lax.fori_loop(0, DF_BISECTIONS, body, (lo, hi))
    return jnp.exp(0.5 * (lo + hi))


def update_df(spec, nu, u, leaf_w, mass, m: int):
    """CM-step 2: each leaf's ν given the E-step's u (n, L) and the leaf weights; ``spec.expert_df`` when fixed."""
    if spec is not None and spec.expert_df is not None:
        return jnp.full_like(nu, spec.expert_df)
    a = 0.5 * (nu + m)
    mean_gap = jnp.sum(leaf_w * (jnp.log(u) - u), 0) / jnp.maximum(mass, jnp.finfo(nu.dtype).tiny)
    new = solve_df(1.0 + mean_gap + digamma(a) - jnp.log(a))
    return jnp.where(mass > 0, new, nu)  # a leaf without data keeps its ν


def m_step(spec, experts, design, y, leaf_w, aux, leaf_gram, opts):
    m = y.shape[1]
    u = (experts.df + m) / (experts.df + aux)  # (n, L): E[τ | y, l] at the current parameters
    mass = jnp.sum(leaf_w, 0)
    wu = leaf_w * u
    new = weighted_m_step(spec, experts, design, y, wu, weighted_gram(design, wu), opts, mass=mass)
    return new._replace(df=update_df(spec, experts.df, u, leaf_w, mass, m))


# -- the predictive distribution (NumPy, float64, on the host) ---------------------------------------------


def _scales(experts, mu):
    """(n, L, m) marginal scales s_l = sqrt(Σ_l,kk) and (L,) degrees of freedom, float64."""
    var = np.diagonal(np.asarray(experts.cov, np.float64), axis1=1, axis2=2)  # (L, m)
    return np.broadcast_to(np.sqrt(var)[None], mu.shape), np.asarray(experts.df, np.float64)


def leaf_variance(experts, mu):
    """Per-leaf variance of each output, (n, L, m): ``ν/(ν-2) Σ_l,kk``, infinite for ν ≤ 2."""
    s, nu = _scales(experts, mu)
    factor = np.where(nu > 2, nu / np.where(nu > 2, nu - 2, 1.0), np.inf)
    return s**2 * factor[None, :, None]


def mixture_quantiles(experts, pi, mu, q):
    """Quantiles of ``Σ_l π_l t_{ν_l}(μ_l, s_l²)`` per output, (n, m, len(q)): 80 bisection steps on the mixture
    CDF between the smallest and the largest leaf quantile at the same level (the mixture's lies between)."""
    s, nu = _scales(experts, mu)
    nu_b = nu[None, :, None, None]

    def cdf(yv):  # (n, m, Q) -> (n, m, Q)
        return np.einsum("nl,nlkq->nkq", pi, stats.t.cdf((yv[:, None] - mu[..., None]) / s[..., None], nu_b))

    leaf_q = mu[..., None] + s[..., None] * stats.t.ppf(q, nu_b)  # (n, L, m, Q)
    return bisect_quantiles(cdf, q, leaf_q.min(1), leaf_q.max(1))


def sample(experts, means, leaf, rng):
    """Draws ``t_ν(means, Σ_leaf)`` = means + L z / sqrt(g/ν), g ~ χ²_ν: ``means`` (n, S, m) -> (n, S, m)."""
    chol = np.linalg.cholesky(np.asarray(experts.cov, np.float64))[leaf]  # (n, S, m, m)
    nu = np.asarray(experts.df, np.float64)[leaf]  # (n, S)
    z = np.einsum("nsij,nsj->nsi", chol, rng.normal(size=means.shape))
    return means + z / np.sqrt(rng.chisquare(nu) / nu)[..., None]


class StudentTExpert(GaussianExpert):
    """Gaussian experts' design, ridge, covariance forms and pooled fit, with t noise (degrees of freedom per
    leaf). Not closed-form: every M-step re-weights rows by u."""

    name = "student_t"
    closed_form = False
    uses_gram = False  # the Grams are weighted by h·u, computed in the M-step
    has_df = True

    def log_prob(self, spec, experts, design, y):
        return log_prob(spec, experts, design, y)

    def m_step(self, spec, experts, design, y, leaf_w, aux, leaf_gram, opts, solver="newton"):
        return m_step(spec, experts, design, y, leaf_w, aux, leaf_gram, opts)

    def initial_fit(self, spec, experts, design, y, leaf_w, leaf_gram, opts, solver, n_steps):
        """A Gaussian fit to the leaf weights (u = 1), then ``n_steps`` ECM steps from ν = DF_START (or the fixed
        ν): the t weights are only meaningful once the scales are."""
        df = DF_START if spec is None or spec.expert_df is None else spec.expert_df
        start = weighted_m_step(spec, experts, design, y, leaf_w, leaf_gram, opts)
        start = start._replace(df=jnp.full((leaf_w.shape[1],), df, design.dtype))

        def step(_, ex):
            _, d2 = log_prob(spec, ex, design, y)
            return m_step(spec, ex, design, y, leaf_w, d2, None, opts)

        return jax.lax.fori_loop(0, n_steps, step, start)

    def zeros(self, L, p, k, m, dtype):
        return super().zeros(L, p, k, m, dtype)._replace(df=jnp.full((L,), DF_START, dtype))

    def n_noise_parameters(self, spec):
        return super().n_noise_parameters(spec) + (spec.tree.n_leaves if spec.expert_df is None else 0)

    leaf_variance = staticmethod(leaf_variance)
    mixture_quantiles = staticmethod(mixture_quantiles)
    sample = staticmethod(sample)

    # gradient solvers: ν = DF_MIN + (DF_MAX - DF_MIN) sigmoid(a), when estimated
    def extra_unconstrained(self, spec, experts, var_floor):
        u = super().extra_unconstrained(spec, experts, var_floor)
        if spec.expert_df is None:
            frac = (experts.df - DF_MIN) / (DF_MAX - DF_MIN)
            eps = 1e-6
            u["df"] = jnp.log(jnp.clip(frac, eps, 1 - eps)) - jnp.log1p(-jnp.clip(frac, eps, 1 - eps))
        return u

    def constrained_df(self, spec, u, dtype):
        if spec.expert_df is not None:
            return jnp.full((spec.tree.n_leaves,), spec.expert_df, dtype)
        return DF_MIN + (DF_MAX - DF_MIN) * jax.nn.sigmoid(u["df"])

    # Bayes: scales ~ HalfNormal(noise_scale · sd(y)) as for Gaussian experts; ν ~ Gamma(2, 0.1) (Juárez & Steel
    # 2010, "Model-based clustering of non-Gaussian panel data based on skew-t distributions": mean 20, a
    # weakly informative prior that keeps ν away from 0), unless the spec fixes ν
    def bayes_noise(self, spec, scale, priors):
        import numpyro
        import numpyro.distributions as dist

        out = super().bayes_noise(spec, scale, priors)
        L = spec.tree.n_leaves
        if spec.expert_df is None:
            out["df"] = numpyro.sample("df", dist.Gamma(DF_PRIOR_SHAPE, DF_PRIOR_RATE).expand([L]).to_event(1))
        else:
            out["df"] = jnp.full((L,), spec.expert_df)
        return out

    def bayes_likelihood(self, spec, log_pi, eta, experts):
        import numpyro.distributions as dist

        mix = dist.Categorical(logits=log_pi)
        if spec.n_targets == 1:
            return dist.MixtureSameFamily(mix, dist.StudentT(experts.df, eta[..., 0], jnp.sqrt(experts.cov[:, 0, 0])))
        return dist.MixtureSameFamily(mix, dist.MultivariateStudentT(experts.df, eta,
                                                                     jnp.linalg.cholesky(experts.cov)))

    def noise_sites(self, spec, experts):
        out = super().noise_sites(spec, experts)
        if spec.expert_df is None:
            out["df"] = jnp.asarray(experts.df)
        return out

    def noise_from_sites(self, spec, sample):
        out = super().noise_from_sites(spec, sample)
        fixed = spec.expert_df
        out["df"] = jnp.asarray(sample["df"]) if fixed is None else jnp.full(out["cov"].shape[:-2], fixed)
        return out


STUDENT_T = register_expert(StudentTExpert())
