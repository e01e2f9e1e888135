r"""Poisson experts with log link: ``y_j | x, leaf l ~ Poisson(exp(θ_{l,j}·[1, x]))`` (outputs independent).

M-step: one Newton (IRLS) step per leaf and output with step halving, warm-started:
gradient ``Σ_t h_tl (y_tj - μ_tlj) d_t - α θ_s``, curvature ``Σ_t h_tl μ_tlj d_t d_tᵀ + α J``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gammaln
from scipy.stats import poisson as poisson_dist

from .._linalg import newton_ascent, solve_psd, weighted_gram
from ..params import ExpertParams
from . import register_expert
from .base import ExpertFamily
from .linear import linear_predictor, newton_maximise, ridge_columns, theta, tie_rows, tied_solve


def log_prob(spec, experts, design, y):
    eta = linear_predictor(experts, design)  # (n, L, m)
    ll = y[:, None, :] * eta - jnp.exp(eta) - jax.scipy.special.gammaln(y + 1.0)[:, None, :]
    return jnp.sum(ll, -1), eta


def mean(spec, experts, design):
    return jnp.exp(linear_predictor(experts, design))


def m_step(spec, experts, design, y, leaf_w, aux, leaf_gram, opts, solver="newton"):
    n, q = design.shape
    L = leaf_w.shape[1]
    m = y.shape[1]
    dtype = design.dtype
    pen = ridge_columns(opts.alpha, q, dtype)
    shared = () if spec is None else spec.shared_rows
    if shared:
        return _tied_m_step(experts, design, y, leaf_w, opts, shared)
    th = theta(experts).transpose(0, 2, 1).reshape(L * m, q)  # units (leaf, output)
    centre = jnp.tile(_ridge_centre(opts, q, m, dtype).T, (L, 1))  # per unit (leaf, output)
    mu = jnp.exp(aux)  # (n, L, m)
    resid = (leaf_w[:, :, None] * (y[:, None, :] - mu)).reshape(n, L * m)
    grad = (design.T @ resid).T - pen * (th - centre)
    curv = weighted_gram(design, (leaf_w[:, :, None] * mu).reshape(n, L * m)) + jnp.diag(pen)
    step = solve_psd(curv, grad)
    w = leaf_w

    def objective(t):
        eta = design @ t.T  # (n, L*m)
        ll = (y[:, None, :] * eta.reshape(n, L, m) - jnp.exp(eta.reshape(n, L, m))).reshape(n, L * m)
        return jnp.einsum("nu,nu->u", jnp.repeat(w, m, axis=1), ll) - 0.5 * jnp.einsum("uq,q->u", (t - centre)**2, pen)

    ll0 = (y[:, None, :] * aux - mu).reshape(n, L * m)
    f0 = jnp.einsum("nu,nu->u", jnp.repeat(w, m, axis=1), ll0) - 0.5 * jnp.einsum("uq,q->u", (th - centre)**2, pen)
    th, _ = newton_ascent(th, step, objective, f0)
    th = th.reshape(L, m, q).transpose(0, 2, 1)
    return ExpertParams(th[:, 0, :], th[:, 1:, :], None)


def _ridge_centre(opts, q, m, dtype):
    """(q, m): the ridge's centre per design row (0 for the intercept, ``coef_target`` or 0 for the slopes)."""
    if opts.coef_target is None:
        return jnp.zeros((q, m), dtype)
    return jnp.concatenate([jnp.zeros((1, m), dtype), jnp.asarray(opts.coef_target, dtype)], 0)


def _tied_m_step(experts, design, y, leaf_w, opts, shared):
    """The Newton step with fixed effects: per output, one step of all leaves jointly with the rows ``shared``
    tied (:func:`hme.families.linear.tied_solve` on the leaves' curvatures), halved until the output's summed
    objective does not fall. The current coefficients are first tied (a no-op after the first step)."""
    q, m = design.shape[1], y.shape[1]
    dtype = design.dtype
    pen = ridge_columns(opts.alpha, q, dtype)
    centre = _ridge_centre(opts, q, m, dtype)
    th = tie_rows(theta(experts), shared)  # (L, q, m)

    def objective(t):  # (m, L, q) -> (m,): per output, summed over leaves
        eta = jnp.einsum("nq,klq->nlk", design, t)
        ll = jnp.einsum("nl,nlk->k", leaf_w, y[:, None, :] * eta - jnp.exp(eta))
        return ll - 0.5 * jnp.einsum("klq,q->k", (t - centre.T[:, None, :]) ** 2, pen)

    eta = jnp.einsum("nq,lqk->nlk", design, th)
    mu = jnp.exp(eta)
    grad = jnp.einsum("nq,nlk->lqk", design, leaf_w[:, :, None] * (y[:, None, :] - mu)) - pen[None, :, None] * (
        th - centre[None])
    curv = jnp.einsum("nq,nlk,nr->klqr", design, leaf_w[:, :, None] * mu, design) + jnp.diag(pen)  # (m, L, q, q)
    th_k = th.transpose(2, 0, 1)  # (m, L, q)
    rhs = jnp.einsum("klqr,klr->klq", curv, th_k) + grad.transpose(2, 0, 1)
    target = jax.vmap(lambda a, b: tied_solve(a, b[..., None], shared)[..., 0])(curv, rhs)
    new, _ = newton_ascent(th_k, target - th_k, objective, objective(th_k))
    new = new.transpose(1, 2, 0)
    return ExpertParams(new[:, 0, :], new[:, 1:, :], None)


# -- the predictive distribution (NumPy, float64, on the host) ---------------------------------------------
# ``pi`` (n, L) are gate path probabilities, ``mu`` (n, L, m) the leaves' means; Poisson experts have no
# noise parameters (``experts`` is not read).


def leaf_variance(experts, mu):
    """Per-leaf variance of each output, (n, L, m): a Poisson variance is its mean."""
    return mu


def mixture_quantiles(experts, pi, mu, q):
    """Quantiles of the mixture ``Σ_l π_l Poisson(μ_l)`` per output, (n, m, len(q)): the smallest count k with
    CDF(k) ≥ q, by integer bisection on the mixture CDF."""
    sd = np.sqrt(mu)

    def cdf(k):  # (n, m, Q) -> (n, m, Q)
        return np.einsum("nl,nlkq->nkq", pi, poisson_dist.cdf(k[:, None], mu[..., None]))

    lo = -np.ones(mu.shape[:1] + mu.shape[2:] + q.shape)
    hi = np.ceil((mu + 12 * sd + 12).max(1))[..., None] * np.ones_like(q)
    while np.any(hi - lo > 1):
        mid = np.floor(0.5 * (lo + hi))
        below = cdf(mid) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return hi


def sample(experts, means, leaf, rng):
    """Draws ``Poisson(means)``: ``means`` (n, S, m) -> (n, S, m) float64 counts."""
    return rng.poisson(means).astype(np.float64)


class PoissonExpert(ExpertFamily):
    name = "poisson"
    supports_shared_coef = True

    def check_targets(self, y):
        if np.any(np.asarray(y) < 0):
            raise ValueError("Poisson experts need non-negative counts y")

    def log_prob(self, spec, experts, design, y):
        return log_prob(spec, experts, design, y)

    def mean(self, spec, experts, design):
        return mean(spec, experts, design)

    def m_step(self, spec, experts, design, y, leaf_w, aux, leaf_gram, opts, solver="newton"):
        return m_step(spec, experts, design, y, leaf_w, aux, leaf_gram, opts)

    def pooled_fit(self, D, y, w, pen, n_targets):
        """Per output, Newton's method with halving on the penalised weighted Poisson log-likelihood."""
        n = D.shape[0]
        Y = np.asarray(y, np.float64).reshape(n, -1)
        k = Y.shape[1]
        out = np.zeros((D.shape[1], k))
        for j in range(k):
            yj = Y[:, j]

            def f(th, yj=yj):
                eta = D @ th
                return np.sum(w * (yj * eta - np.exp(eta) - gammaln(yj + 1))) - 0.5 * np.sum(pen * th**2)

            def gh(th, yj=yj):
                mu = np.exp(D @ th)
                return D.T @ (w * (yj - mu)) - pen * th, D.T @ ((w * mu)[:, None] * D) + np.diag(pen)

            th0 = np.zeros(D.shape[1])
            th0[0] = np.log(max(w @ yj / w.sum(), 1e-12))
            out[:, j] = newton_maximise(f, gh, th0)
        return out

    # the predictive distribution: the module's NumPy functions above
    leaf_variance = staticmethod(leaf_variance)
    mixture_quantiles = staticmethod(mixture_quantiles)
    sample = staticmethod(sample)

    # Bayes: the intercepts' prior is centred on the log of the mean count, slopes on the log scale (sd 1)
    def bayes_scale(self, y):
        return float(np.log(max(float(np.mean(y)), 1e-3))), 1.0

    def bayes_likelihood(self, spec, log_pi, eta, experts):
        import numpyro.distributions as dist

        if spec.n_targets != 1:
            raise ValueError("Bayesian Poisson experts have one output")
        return dist.MixtureSameFamily(dist.Categorical(logits=log_pi), dist.Poisson(jnp.exp(eta[..., 0])))


POISSON = register_expert(PoissonExpert())
