"""The predictive mixture (hme.predictive) against SciPy: quantiles by root-finding on a mixture CDF written
here, Poisson quantiles by counting, moments and draws."""

import numpy as np
import pytest
from scipy import optimize, stats

import hme
from hme import predictive
from hme.params import ExpertParams


def _noise(cov, df=None):
    """The expert parameters the predictive functions read: the noise (scale) matrices and degrees of freedom."""
    return ExpertParams(None, None, cov, df)


def _mixture(rng, n=5, L=3, m=2):
    pi = rng.dirichlet(np.ones(L), size=n)
    mu = rng.normal(size=(n, L, m)) * 3
    return pi, mu


def test_gaussian_quantiles_solve_the_mixture_cdf(rng):
    spec = hme.make_spec(2, depth=1, branching=3, n_targets=2)
    pi, mu = _mixture(rng)
    A = rng.normal(size=(3, 2, 2))
    cov = A @ A.transpose(0, 2, 1) + 0.1 * np.eye(2)
    q = np.array([0.05, 0.5, 0.975])
    out = predictive.mixture_quantiles(spec, _noise(cov), pi, mu, q)
    for t in range(pi.shape[0]):
        for k in range(2):
            sd = np.sqrt(cov[:, k, k])

            def cdf(v, t=t, k=k, sd=sd):
                return np.sum(pi[t] * stats.norm.cdf(v, mu[t, :, k], sd))

            for j, level in enumerate(q):
                ref = optimize.brentq(lambda v, level=level, cdf=cdf: cdf(v) - level, -100, 100, xtol=1e-12)
                assert out[t, k, j] == pytest.approx(ref, abs=1e-8)


def test_poisson_quantiles_are_the_smallest_count_reaching_the_level(rng):
    spec = hme.make_spec(2, depth=1, branching=3, expert="poisson")
    pi, _ = _mixture(rng, m=1)
    mu = rng.uniform(0.2, 30, size=(pi.shape[0], 3, 1))
    q = np.array([0.01, 0.3, 0.5, 0.99])
    out = predictive.mixture_quantiles(spec, _noise(None), pi, mu, q)
    ks = np.arange(400)
    for t in range(pi.shape[0]):
        cdf = np.sum(pi[t][:, None] * stats.poisson.cdf(ks[None], mu[t, :, 0][:, None]), 0)
        for j, level in enumerate(q):
            assert out[t, 0, j] == ks[np.argmax(cdf >= level)]


@pytest.mark.parametrize("expert", ["gaussian", "poisson"])
def test_std_and_draws_agree_with_the_mixture_moments(expert, rng):
    spec = hme.make_spec(2, depth=1, branching=3, expert=expert)
    pi, mu = _mixture(rng, m=1)
    if expert == "poisson":
        mu = np.abs(mu) + 0.5
        cov, var = None, mu
    else:
        cov = rng.uniform(0.5, 2, size=(3, 1, 1))
        var = np.broadcast_to(cov[:, 0, 0][None, :, None], mu.shape)
    mean = np.einsum("nl,nlk->nk", pi, mu)
    std = np.sqrt(np.einsum("nl,nlk->nk", pi, var + mu**2) - mean**2)
    np.testing.assert_allclose(predictive.mixture_std(spec, _noise(cov), pi, mu), std, rtol=1e-12)
    draws = predictive.mixture_sample(spec, _noise(cov), pi, mu, 40000, np.random.default_rng(0))  # (n, 1, S)
    assert np.all(np.abs(draws[:, 0].mean(1) - mean[:, 0]) < 4 * std[:, 0] / np.sqrt(40000))
    np.testing.assert_allclose(draws[:, 0].std(1), std[:, 0], rtol=0.03)


def test_classifiers_have_no_predictive_distribution_over_y(rng):
    spec = hme.make_spec(2, depth=1, expert="categorical", n_targets=3)
    with pytest.raises(ValueError, match="categorical"):
        predictive.mixture_quantiles(spec, _noise(None), *_mixture(rng, L=2), [0.5])
