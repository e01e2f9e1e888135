"""The experts' default ridge: towards the pooled single-expert fit, on the standardised input scale (issue 12).
The pooled fits agree with scikit-learn's, and the ridge moves every expert between its own fit and the pooled one."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge

import hme
from hme.pooled import pooled_slopes
from hme.simulate import flexmix_k4


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


def _ridge_opts(alpha, target, scale, m):
    from hme.fitting import FitOptions

    return FitOptions(tol=jnp.asarray(0.0), alpha=jnp.asarray(alpha), gate_alpha=jnp.asarray(0.0),
                      var_floor=jnp.full((m,), 1e-12), coef_target=jnp.asarray(target),
                      coef_scale=jnp.asarray(scale))


def test_gaussian_coefficient_step_is_a_ridge_in_the_fixed_noise_scale(rng):
    """Given Σ_l, the coefficients minimise ``Σ_t h_tl (y_t - d_tᵀ b_l)² / (2σ_l²) + ½ Σ_j α_j (b_lj - t_j)² / S``:
    scikit-learn's Ridge with alpha = σ_l²/S on the inputs divided by √α_j and y - X t (the weighted mean
    centring is its free intercept); Σ_l is then the plain weighted residual variance (no ridge term added)."""
    from hme._linalg import weighted_gram
    from hme.families import gaussian
    from hme.model import make_design
    from hme.params import ExpertParams

    spec = hme.make_spec(3, depth=1, branching=3)
    X = rng.normal(size=(150, 3))
    y = X @ [1.0, -2.0, 0.5] + rng.normal(size=150)
    W = rng.uniform(size=(150, 3))
    a, t, S = np.array([3.0, 40.0, 0.5]), np.array([0.3, -1.0, 2.0]), 0.7
    var = np.array([0.2, 1.5, 9.0])
    experts = ExpertParams(jnp.zeros((3, 1)), jnp.zeros((3, 3, 1)), jnp.asarray(var)[:, None, None])
    D = make_design(spec, jnp.asarray(X)).expert
    opts = _ridge_opts(np.concatenate([[0.0], a]), t[:, None], [[S]], 1)
    new = gaussian.m_step(spec, experts, D, jnp.asarray(y)[:, None], jnp.asarray(W), None,
                          weighted_gram(D, jnp.asarray(W)), opts)
    for l in range(3):
        ref = Ridge(alpha=var[l] / S, tol=1e-12).fit(X / np.sqrt(a), y - X @ t, sample_weight=W[:, l])
        np.testing.assert_allclose(np.asarray(new.coef)[l, :, 0], ref.coef_ / np.sqrt(a) + t, rtol=1e-8)
        resid = y - X @ np.asarray(new.coef)[l, :, 0] - float(new.intercept[l, 0])
        np.testing.assert_allclose(float(new.cov[l, 0, 0]), W[:, l] @ resid**2 / W[:, l].sum(), rtol=1e-8)


def test_gaussian_coefficient_step_with_several_outputs_maximises_the_penalised_likelihood(rng):
    """Two correlated outputs, full Σ_l and a full scale S: the step's coefficients are where the gradient of
    ``½ Σ_t h_t (y_t - Bᵀd_t)ᵀ Σ⁻¹ (y_t - Bᵀd_t) + ½ tr(S⁻¹ (B - T)ᵀ diag(α) (B - T))`` vanishes (SciPy BFGS on an
    independent NumPy objective)."""
    from scipy.optimize import minimize

    from hme._linalg import weighted_gram
    from hme.families import gaussian
    from hme.model import make_design
    from hme.params import ExpertParams

    spec = hme.make_spec(2, depth=1, n_targets=2)
    n = 120
    X = rng.normal(size=(n, 2))
    Y = X @ rng.normal(size=(2, 2)) + rng.multivariate_normal([0, 0], [[1, 0.6], [0.6, 2]], size=n)
    W = rng.uniform(size=(n, 2))
    a, T = np.array([5.0, 20.0]), rng.normal(size=(2, 2))
    S = np.array([[0.5, 0.2], [0.2, 1.5]])
    cov = np.array([[[1.0, -0.3], [-0.3, 0.4]], [[2.0, 0.9], [0.9, 3.0]]])
    experts = ExpertParams(jnp.zeros((2, 2)), jnp.zeros((2, 2, 2)), jnp.asarray(cov))
    D = make_design(spec, jnp.asarray(X)).expert
    new = gaussian.m_step(spec, experts, D, jnp.asarray(Y), jnp.asarray(W), None, weighted_gram(D, jnp.asarray(W)),
                          _ridge_opts(np.concatenate([[0.0], a]), T, S, 2))
    Dn = np.column_stack([np.ones(n), X])
    for l in range(2):
        P, Si = np.linalg.inv(cov[l]), np.linalg.inv(S)

        def f(v, l=l, P=P, Si=Si):
            B = v.reshape(3, 2)
            R = Y - Dn @ B
            dev = B[1:] - T
            return 0.5 * np.einsum("t,ti,ij,tj->", W[:, l], R, P, R) + 0.5 * np.trace(Si @ dev.T @ np.diag(a) @ dev)

        best = minimize(f, np.zeros(6), method="BFGS", options={"gtol": 1e-10}).x.reshape(3, 2)
        ours = np.vstack([np.asarray(new.intercept)[l], np.asarray(new.coef)[l]])
        np.testing.assert_allclose(ours, best, atol=1e-5)


def test_em_with_the_fixed_scale_ridge_is_monotone(rng):
    """The ECM steps (coefficients given Σ_l, then Σ_l) never lower the penalised log-likelihood."""
    spec = hme.make_spec(2, depth=2)
    X = rng.normal(size=(400, 2))
    y = np.where(X[:, 0] > 0, 3 * X[:, 1], -2 * X[:, 0]) + 0.1 * rng.normal(size=400)
    res = hme.fit_em(spec, X, y, n_init=1, random_state=0, max_iter=150, tol=0.0, alpha=[4.0, 9.0],
                     coef_target=[[0.5], [-0.5]], coef_scale=0.8)
    h = np.asarray(res.history)
    h = h[np.isfinite(h)]
    assert h.size > 20 and np.all(np.diff(h) >= -1e-9 * np.abs(h[1:]))


def test_coef_scale_is_checked():
    X = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(ValueError, match="coef_scale"):
        hme.fit_em(hme.make_spec(2, depth=1), X, X[:, 0], coef_scale=-1.0)
    with pytest.raises(ValueError, match="coef_scale"):
        hme.fit_em(hme.make_spec(2, depth=1, n_targets=2), X, X, coef_scale=np.ones((3, 3)))
    with pytest.raises(ValueError, match="coef_scale"):
        hme.fit_em(hme.make_spec(2, depth=1, expert="categorical", n_targets=2), X, (X[:, 0] > 0).astype(int),
                   coef_scale=1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_default_regressor_reaches_the_true_parameters_log_likelihood(seed):
    """With every default (expert and gate ridges on), a fit to data drawn from an HME of its own shape ends at
    or above the log-likelihood of the parameters that drew them. The conjugate expert ridge (penalty scaled by
    Σ_l⁻¹) ended these fits about 100 nats below it by inflating the tight experts' variances."""
    X, y, truth, _ = flexmix_k4(2000, np.random.default_rng(1000 * seed + 2000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = hme.HMERegressor(depth=1, branching=4, max_iter=2000, tol=1e-8, random_state=seed).fit(X, y)
    assert float(model.log_likelihood(X, y).sum()) >= truth
