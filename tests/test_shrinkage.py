"""The experts' default ridge: towards the pooled single-expert fit, on the standardised input scale (issue 12).
The pooled fits agree with scikit-learn's, and the ridge moves every expert between its own fit and the pooled one."""

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge

import hme
from hme.pooled import pooled_slopes


def _std(X):
    return (X - X.mean(0)) / X.std(0)


def test_pooled_gaussian_is_weighted_ridge(rng):
    X = _std(rng.normal(size=(300, 3)))
    y = X @ [1.0, -2.0, 0.5] + rng.normal(size=300)
    w = rng.uniform(0.5, 2.0, size=300)
    spec = hme.make_spec(3, depth=1)
    ours = pooled_slopes(spec, X, y[:, None], w, 7.0)[:, 0]
    ref = Ridge(alpha=7.0).fit(X, y, sample_weight=w).coef_
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_pooled_logistic_and_poisson_match_scikit_learn(rng):
    X = _std(rng.normal(size=(400, 3)))
    yb = (X[:, 0] - X[:, 1] + rng.logistic(size=400) > 0).astype(int)
    spec = hme.make_spec(3, depth=1, expert="categorical", n_targets=2)
    ours = pooled_slopes(spec, X, yb, None, 2.0)[:, 0]
    ref = LogisticRegression(C=1 / 2.0, tol=1e-12, max_iter=10_000).fit(X, yb).coef_[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    yc = rng.poisson(np.exp(0.5 + 0.3 * X[:, 0] - 0.2 * X[:, 2]))
    spec = hme.make_spec(3, depth=1, expert="poisson")
    ours = pooled_slopes(spec, X, yc[:, None], None, 4.0)[:, 0]
    ref = PoissonRegressor(alpha=4.0 / 400, tol=1e-12, max_iter=10_000).fit(X, yc).coef_
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_pooled_multinomial_maximises_its_penalised_likelihood(rng):
    """Reference-class parameterisation: the gradient of the penalised log-likelihood vanishes (finite
    differences of an independent NumPy objective)."""
    from scipy.special import logsumexp

    X = _std(rng.normal(size=(300, 2)))
    y = np.argmax(X @ rng.normal(size=(2, 3)) + rng.gumbel(size=(300, 3)), axis=1)
    spec = hme.make_spec(2, depth=1, expert="categorical", n_targets=3)
    T = pooled_slopes(spec, X, y, None, 3.0)  # (2, C-1)

    def f(slopes, icpt):
        z = np.column_stack([np.zeros(300), icpt + (X - X.mean(0)) @ slopes.reshape(2, 2)])
        return np.sum(z[np.arange(300), y] - logsumexp(z, axis=1)) - 1.5 * np.sum(slopes**2)

    from scipy.optimize import minimize

    best = minimize(lambda v: -f(v[:4], v[4:]), np.zeros(6), method="BFGS", options={"gtol": 1e-9})
    np.testing.assert_allclose(T.reshape(-1), best.x[:4], atol=1e-4)


@pytest.mark.parametrize("shrink_to", ["pooled", "zero"])
def test_a_strong_ridge_makes_every_expert_the_pooled_fit_or_flat(shrink_to, rng):
    X = rng.normal(size=(400, 2)) * [1.0, 10.0]
    y = np.where(X[:, 0] > 0, 2 * X[:, 0], -X[:, 0]) + 0.1 * X[:, 1] + 0.1 * rng.normal(size=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = hme.HMERegressor(depth=1, alpha=1e7, shrink_to=shrink_to, random_state=0).fit(X, y)
    coef = reg.params_.experts.coef[:, :, 0]
    sd = X.std(0)
    expect = np.zeros(2) if shrink_to == "zero" else Ridge(alpha=1.0).fit(X / sd, y).coef_ / sd
    np.testing.assert_allclose(coef, np.broadcast_to(expect, coef.shape), atol=2e-3)
    if shrink_to == "pooled":
        np.testing.assert_allclose(reg.expert_coef_target_[:, 0], expect, rtol=1e-3)
    # a negligible ridge leaves the two regimes' slopes apart (the data support them)
    free = hme.HMERegressor(depth=1, alpha=1e-6, shrink_to=shrink_to, random_state=0, n_init=2).fit(X, y)
    assert np.ptp(free.params_.experts.coef[:, 0, 0]) > 2.5


def test_the_ridge_is_on_the_standardised_scale(rng):
    """Rescaling an input leaves the fit's predictions unchanged: the experts' ridge acts on α·Var(x_j). (The
    gates' ridge ``gate_alpha`` is on the raw scale, so it is switched off here.)"""
    X = rng.normal(size=(300, 2))
    y = np.sin(2 * X[:, 0]) + 0.3 * X[:, 1] + 0.1 * rng.normal(size=300)
    kw = dict(depth=1, random_state=0, tol=1e-10, max_iter=1000, gate_alpha=0.0)
    a = hme.HMERegressor(**kw).fit(X, y)
    b = hme.HMERegressor(**kw).fit(X * [1000.0, 0.01], y)
    np.testing.assert_allclose(a.predict(X), b.predict(X * [1000.0, 0.01]), rtol=1e-3, atol=1e-3)
    c = hme.HMERegressor(**kw, shrink_to="zero").fit(X, y)
    assert np.max(np.abs(c.predict(X) - a.predict(X))) > 1e-3  # the target matters
