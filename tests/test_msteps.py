"""M-steps against independent references: scikit-learn's weighted regressions and SciPy's optimiser.

Soft targets become exact scikit-learn problems by duplicating each row once per class with weight
(posterior mass of that class).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_params
from scipy.optimize import minimize
from sklearn.linear_model import LinearRegression, LogisticRegression, PoissonRegressor

import hme
import hme._logit
from hme import gates
from hme._logit import masked_log_softmax, newton_cg, newton_curvature, unit_logits, unit_objective
from hme.families import categorical, gaussian, poisson
from hme.fitting import FitOptions
from hme.model import edge_mass, make_design

X64 = jax.config.jax_enable_x64
pytestmark = pytest.mark.skipif(not X64, reason="reference comparisons run in float64")


def _opts(alpha=0.0, gate_alpha=0.0, m=1):
    return FitOptions(
        tol=jnp.asarray(1e-8),
        alpha=jnp.asarray(alpha),
        gate_alpha=jnp.asarray(gate_alpha),
        var_floor=jnp.full((m,), 1e-12),
    )


def test_gaussian_m_step_is_weighted_least_squares(rng):
    spec = hme.make_spec(3, depth=2)
    X = rng.normal(size=(200, 3))
    y = X @ [1.0, -2.0, 0.5] + rng.normal(size=200)
    W = rng.uniform(size=(200, 4))
    D = make_design(spec, jnp.asarray(X)).expert
    from hme._linalg import weighted_gram

    p = random_params(spec, rng)
    new = gaussian.m_step(
        spec, p.experts, D, jnp.asarray(y)[:, None], jnp.asarray(W), None, weighted_gram(D, jnp.asarray(W)), _opts()
    )
    for l in range(4):
        ref = LinearRegression().fit(X, y, sample_weight=W[:, l])
        np.testing.assert_allclose(np.asarray(new.coef)[l, :, 0], ref.coef_, rtol=1e-8)
        np.testing.assert_allclose(np.asarray(new.intercept)[l, 0], ref.intercept_, rtol=1e-8)
        resid = y - ref.predict(X)
        np.testing.assert_allclose(np.asarray(new.cov)[l, 0, 0], np.sum(W[:, l] * resid**2) / W[:, l].sum(), rtol=1e-8)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _iterate_gates(spec, solver, n_steps, g, design, edge_w):
    node_w = edge_w.sum(-1)
    node_gram = None
    if solver == "bound":
        from hme._linalg import weighted_gram

        node_gram = weighted_gram(design, node_w)

    def step(_, g):
        lp = gates.gate_log_probs(spec, design, g)
        return gates.m_step(spec, g, design, lp, edge_w, node_w, 1e-12, solver, node_gram)

    return jax.lax.fori_loop(0, n_steps, step, g)


def _soft_gate_problem(spec, rng, n=300):
    X = rng.normal(size=(n, spec.n_features))
    leaf = rng.dirichlet(np.ones(spec.tree.n_leaves) * 0.7, size=n) * rng.uniform(0.5, 2.0, size=(n, 1))
    return X, edge_mass(spec, jnp.asarray(leaf))


@pytest.mark.parametrize("solver,n_steps", [("newton", 30), ("bound", 400)])
@pytest.mark.parametrize("branching", [2, 3])
def test_softmax_gate_m_step_is_weighted_logistic_regression(solver, n_steps, branching, rng):
    spec = hme.make_spec(2, depth=2, branching=branching)
    X, edge_w = _soft_gate_problem(spec, rng)
    d = make_design(spec, jnp.asarray(X))
    g0 = hme.zeros_params(spec, jnp.float64).gates
    g = _iterate_gates(spec, solver, n_steps, g0, d.gate, edge_w)
    probs = np.exp(np.asarray(gates.gate_log_probs(spec, d.gate, g)))
    E = np.asarray(edge_w)
    for gid in (0, 2):
        B = branching
        Xd = np.repeat(X, B, axis=0)
        labels = np.tile(np.arange(B), len(X))
        ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(Xd, labels, sample_weight=E[:, gid].ravel())
        np.testing.assert_allclose(probs[:, gid], ref.predict_proba(X), atol=2e-6)


def test_laplace_gate_m_step_matches_scipy(rng):
    spec = hme.ModelSpec(hme.TreeSpec.complete(1, 3), n_features=2, gate="laplace")
    X, edge_w = _soft_gate_problem(spec, rng, n=200)
    d = make_design(spec, jnp.asarray(X))
    g0 = hme.GateParams(jnp.zeros((1, 3)), jnp.asarray(rng.normal(size=(1, 3, 2))))
    g = _iterate_gates(spec, "newton", 60, g0, d.gate, edge_w)
    E = np.asarray(edge_w)[:, 0]
    eps = spec.laplace_smoothing

    def negQ(v):
        b = np.concatenate([[0.0], v[:2]])
        W = v[2:].reshape(3, 2)
        s = b[None] - np.sqrt(((X[:, None, :] - W[None]) ** 2).sum(-1) + eps**2)
        logp = s - np.log(np.exp(s).sum(1, keepdims=True))
        return -(E * logp).sum()

    v0 = np.concatenate([[0.0, 0.0], np.asarray(g0.weight).ravel()])
    ref = minimize(negQ, v0, method="BFGS", options=dict(gtol=1e-9, maxiter=5000))
    ours = np.concatenate([np.asarray(g.bias)[0, 1:], np.asarray(g.weight).ravel()])
    assert negQ(ours) <= ref.fun + 1e-7
    np.testing.assert_allclose(ours, ref.x, atol=1e-3)


@pytest.mark.parametrize("n_classes,newton_cg_min_work", [(2, None), (3, None), (5, None), (5, 0)])
def test_categorical_m_step_is_weighted_logistic_regression(n_classes, newton_cg_min_work, rng, monkeypatch):
    if newton_cg_min_work is not None:  # the conjugate-gradient Newton solve of large systems
        monkeypatch.setattr(hme._logit, "NEWTON_CG_MIN_WORK", newton_cg_min_work)
    spec = hme.ModelSpec(hme.TreeSpec.complete(1, 2), n_features=2, expert="categorical", n_targets=n_classes)
    X = rng.normal(size=(250, 2))
    y = rng.integers(0, n_classes, 250)
    W = rng.uniform(size=(250, 2))
    D = make_design(spec, jnp.asarray(X)).expert
    Y = jax.nn.one_hot(y, n_classes, dtype=jnp.float64)

    @jax.jit
    def fit(ex):
        def step(_, ex):
            _, aux = categorical.log_prob(spec, ex, D, Y)
            return categorical.m_step(spec, ex, D, Y, jnp.asarray(W), aux, None, _opts())

        return jax.lax.fori_loop(0, 30, step, ex)

    ex = fit(hme.zeros_params(spec, jnp.float64).experts)
    probs = np.asarray(categorical.mean(spec, ex, D))
    for l in range(2):
        ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(X, y, sample_weight=W[:, l])
        np.testing.assert_allclose(probs[:, l], ref.predict_proba(X), atol=2e-6)


@pytest.mark.parametrize("n_classes", [3, 6])  # the (B-1)² weights route and the Kronecker route
def test_newton_curvature_is_the_autodiff_hessian(n_classes, rng):
    n, q, U = 300, 3, 2
    D = jnp.asarray(np.c_[np.ones(n), rng.normal(size=(n, q - 1))])
    theta = jnp.asarray(rng.normal(size=(U, n_classes, q))).at[:, 0].set(0.0)
    mask = np.ones((U, n_classes), bool)
    mask[1, -1] = False  # a unit with an absent class, as in a gate with fewer children
    targets = jnp.asarray(rng.uniform(size=(n, U, n_classes)) * mask)
    totals = targets.sum(-1)
    free = mask[:, 1:]

    def q_unit(free_theta, u):
        th = theta.at[u, 1:].set(free_theta.reshape(n_classes - 1, q))
        return unit_objective(D, th, targets, mask, jnp.zeros(q))[u]

    log_prob = masked_log_softmax(unit_logits(D, theta), mask)
    curv = np.asarray(newton_curvature(D, log_prob, totals, mask))
    for u in range(U):
        ref = -np.asarray(jax.hessian(q_unit)(theta[u, 1:].ravel(), u))
        keep = np.repeat(free[u], q)  # absent classes have no curvature
        np.testing.assert_allclose(curv[u][np.ix_(keep, keep)], ref[np.ix_(keep, keep)], rtol=1e-10, atol=1e-9)
        assert np.all(curv[u][~keep] == 0.0)


def test_newton_cg_solves_the_newton_system(rng):
    n, q, U, C = 400, 4, 3, 6
    D = jnp.asarray(np.c_[np.ones(n), rng.normal(size=(n, q - 1))])
    theta = jnp.asarray(rng.normal(size=(U, C, q))).at[:, 0].set(0.0)
    mask = np.ones((U, C), bool)
    totals = jnp.asarray(rng.uniform(size=(n, U)))
    log_prob = masked_log_softmax(unit_logits(D, theta), mask)
    prob = jnp.exp(log_prob[:, :, 1:])
    grad = jnp.asarray(rng.normal(size=(U, C - 1, q)))
    pen = jnp.asarray(rng.uniform(0.01, 0.1, size=(U, C - 1, q)))
    curv = np.asarray(newton_curvature(D, log_prob, totals, mask)) + np.stack(
        [np.diag(p) for p in np.asarray(pen).reshape(U, -1)]
    )
    exact = np.linalg.solve(curv, np.asarray(grad).reshape(U, -1, 1))[..., 0]
    ours = np.asarray(newton_cg(D, prob, totals, grad, pen, max_iter=200, rtol=1e-12)).reshape(U, -1)
    np.testing.assert_allclose(ours, exact, rtol=1e-7, atol=1e-9 * np.abs(exact).max())
    # truncated after a few iterations it is still an ascent direction: gᵀ H⁻¹-ish step > 0
    short = np.asarray(newton_cg(D, prob, totals, grad, pen, max_iter=3)).reshape(U, -1)
    assert np.all(np.sum(short * np.asarray(grad).reshape(U, -1), 1) > 0)


def test_poisson_m_step_is_weighted_poisson_regression(rng):
    spec = hme.ModelSpec(hme.TreeSpec.complete(1, 3), n_features=2, expert="poisson")
    X = rng.normal(size=(300, 2))
    y = rng.poisson(np.exp(0.5 + X @ [0.3, -0.4])).astype(float)
    W = rng.uniform(size=(300, 3))
    D = make_design(spec, jnp.asarray(X)).expert
    Y = jnp.asarray(y)[:, None]

    @jax.jit
    def fit(ex):
        def step(_, ex):
            _, aux = poisson.log_prob(spec, ex, D, Y)
            return poisson.m_step(spec, ex, D, Y, jnp.asarray(W), aux, None, _opts())

        return jax.lax.fori_loop(0, 30, step, ex)

    ex = fit(hme.zeros_params(spec, jnp.float64).experts)
    for l in range(3):
        ref = PoissonRegressor(alpha=0.0, tol=1e-12, max_iter=10000).fit(X, y, sample_weight=W[:, l])
        np.testing.assert_allclose(np.asarray(ex.coef)[l, :, 0], ref.coef_, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(np.asarray(ex.intercept)[l, 0], ref.intercept_, rtol=1e-6, atol=1e-8)
