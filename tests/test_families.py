"""The family registry: a family defined and registered here, with no edit anywhere else in the package, is fitted
by EM, by the gradient solver and by NUTS, and gets standard errors and predictions.

The toy family is an exponential-regression expert, ``y | x, leaf l ~ Exponential(mean exp(θ_lᵀ [1, x]))``:
``log p = -η - y e^{-η}``, concave in θ, whose M-step is one Newton step with halving per leaf. It is checked
against an independent reference: the exponential mixture's log-likelihood written out in NumPy, recovery of the
true parameters from simulated data, the true parameters' log-likelihood as a floor, and SciPy's L-BFGS on the
same objective.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit, log_expit

import hme
from hme import batched_linalg, families
from hme.families import ExpertFamily
from hme.families.linear import linear_predictor, ridge_columns, theta
from hme.params import ExpertParams

NAME = "toy_exponential"


class ExponentialExpert(ExpertFamily):
    name = NAME

    def check_targets(self, y):
        if np.any(np.asarray(y) <= 0):
            raise ValueError("exponential experts need positive y")

    def log_prob(self, spec, experts, design, y):
        eta = linear_predictor(experts, design)  # (n, L, 1)
        return jnp.sum(-eta - y[:, None, :] * jnp.exp(-eta), -1), eta

    def mean(self, spec, experts, design):
        return jnp.exp(linear_predictor(experts, design))

    def m_step(self, spec, experts, design, y, leaf_w, aux, leaf_gram, opts, solver="newton"):
        pen = ridge_columns(opts.alpha, design.shape[1], design.dtype)
        th = theta(experts)[..., 0]  # (L, q)

        def objective(t):  # (L,)
            eta = design @ t.T
            return jnp.sum(leaf_w * (-eta - y[:, :1] * jnp.exp(-eta)), 0) - 0.5 * jnp.sum(pen * t**2, -1)

        r = y[:, :1] * jnp.exp(-(design @ th.T))  # (n, L)
        grad = (leaf_w * (r - 1.0)).T @ design - pen * th
        curv = jnp.einsum("nl,nq,nr->lqr", leaf_w * r, design, design) + jnp.diag(pen + 1e-9)
        step = batched_linalg.solve_psd(curv, grad)
        sizes = 0.5 ** jnp.arange(20.0)
        values = jax.vmap(lambda s: objective(th + s * step))(sizes)  # (20, L)
        ok = values >= objective(th)[None]
        size = jnp.where(ok.any(0), sizes[jnp.argmax(ok, 0)], 0.0)
        new = th + size[:, None] * step
        return ExpertParams(new[:, :1], new[:, 1:, None], None)

    def leaf_variance(self, experts, mu):
        return mu**2

    def sample(self, experts, means, leaf, rng):
        return rng.exponential(means)

    def bayes_likelihood(self, spec, log_pi, eta, experts):
        import numpyro.distributions as dist

        return dist.MixtureSameFamily(dist.Categorical(logits=log_pi), dist.Exponential(jnp.exp(-eta[..., 0])))


@pytest.fixture(scope="module", autouse=True)
def toy_family():
    fam = families.register_expert(ExponentialExpert())
    yield fam
    families.unregister_expert(NAME)


TRUTH = dict(gate_bias=-0.5, gate_slope=5.0, intercept=(0.3, 2.0), slope=(1.0, -1.5))


def simulate(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=n)
    p1 = expit(TRUTH["gate_bias"] + TRUTH["gate_slope"] * x)
    leaf = (rng.uniform(size=n) < p1).astype(int)
    mean = np.exp(np.asarray(TRUTH["intercept"])[leaf] + np.asarray(TRUTH["slope"])[leaf] * x)
    return x[:, None], rng.exponential(mean)


def mixture_loglik(theta_flat, x, y):
    """Σ_t log Σ_l π_l(x_t) p_l(y_t | x_t), in NumPy: θ = (gate bias, gate slope, a_0, b_0, a_1, b_1)."""
    gb, gs, a0, b0, a1, b1 = theta_flat
    z = gb + gs * x[:, 0]
    log_pi = np.column_stack([log_expit(-z), log_expit(z)])
    eta = np.column_stack([a0 + b0 * x[:, 0], a1 + b1 * x[:, 0]])
    log_p = -eta - y[:, None] * np.exp(-eta)
    m = (log_pi + log_p).max(1)
    return float(np.sum(m + np.log(np.exp(log_pi + log_p - m[:, None]).sum(1))))


def flat(params):
    g, e = params
    return np.array([g.bias[0, 1], g.weight[0, 1, 0], e.intercept[0, 0], e.coef[0, 0, 0], e.intercept[1, 0],
                     e.coef[1, 0, 0]], np.float64)


def ordered(params):
    """Parameters with leaf 0 the one of smaller intercept (label switching)."""
    t = flat(params)
    if t[2] > t[4]:
        t = np.array([-t[0], -t[1], t[4], t[5], t[2], t[3]])
    return t


TRUE_FLAT = np.array([TRUTH["gate_bias"], TRUTH["gate_slope"], TRUTH["intercept"][0], TRUTH["slope"][0],
                      TRUTH["intercept"][1], TRUTH["slope"][1]])


@pytest.fixture(scope="module")
def data():
    return simulate(3000, 0)


@pytest.fixture(scope="module")
def em_fit(data):
    x, y = data
    spec = hme.make_spec(1, depth=1, expert=NAME)
    return spec, hme.em.fit_em(spec, x, y, n_init=2, random_state=0, max_iter=500, tol=1e-10, alpha=0.0,
                               gate_alpha=0.0)


def test_registry_validates_names_and_lists_the_new_family():
    assert NAME in families.expert_names("regression")
    with pytest.raises(ValueError, match="expert must be one of"):
        hme.make_spec(1, depth=1, expert="no_such_family")
    with pytest.raises(ValueError, match="gate must be one of"):
        hme.make_spec(1, depth=1, gate="no_such_gate")
    with pytest.raises(ValueError, match="already registered"):
        families.register_expert(ExponentialExpert())
    with pytest.raises(TypeError):
        families.register_expert(object())


def test_em_reaches_the_truth_and_its_likelihood_matches_numpy(em_fit, data):
    x, y = data
    spec, res = em_fit
    params = jax.device_get(res.params)
    ll = mixture_loglik(flat(params), x, y)
    np.testing.assert_allclose(float(res.log_likelihood), ll, rtol=1e-5)  # the family's log-density, independently
    assert ll >= mixture_loglik(TRUE_FLAT, x, y) - 1.0  # at least the truth's log-likelihood (less 1 nat)
    np.testing.assert_allclose(ordered(params), TRUE_FLAT, atol=0.35)
    hist = np.asarray(res.history)
    hist = hist[np.isfinite(hist)]
    assert np.all(np.diff(hist) >= -1e-5 * np.abs(hist[1:]))  # EM never decreases the objective


def test_em_optimum_agrees_with_lbfgs_on_the_numpy_objective(em_fit, data):
    x, y = data
    _, res = em_fit
    start = ordered(jax.device_get(res.params))
    ref = minimize(lambda t: -mixture_loglik(t, x, y), start + 0.05, method="L-BFGS-B", options={"gtol": 1e-9})
    assert -ref.fun <= mixture_loglik(start, x, y) + 1e-3
    np.testing.assert_allclose(start, ref.x, atol=2e-3)


def test_gradient_solver_fits_the_new_family(em_fit, data):
    x, y = data
    spec, res = em_fit
    g = hme.gradient.fit_gradient(spec, x, y, n_init=1, random_state=0, max_iter=2000, alpha=0.0, gate_alpha=0.0,
                                  start_params=jax.device_get(res.params))
    np.testing.assert_allclose(float(g.log_likelihood), float(res.log_likelihood), rtol=1e-5)


def test_estimator_standard_errors_and_predictions(data):
    x, y = data
    est = hme.HMERegressor(depth=1, expert=NAME, n_init=2, random_state=0, alpha=0.0, gate_alpha=0.0,
                           max_iter=500, out_of_bounds="extrapolate").fit(x, y)
    table = est.summary(x, y)
    se = np.asarray(table["std_err"], np.float64)
    assert se.shape == (6,) and np.all(np.isfinite(se)) and np.all(se > 0)
    # SEs against the inverse of a finite-difference Hessian of the NumPy log-likelihood
    t0 = ordered(est.params_)
    h = 1e-4
    H = np.zeros((6, 6))
    for i in range(6):
        for j in range(6):
            ei, ej = np.eye(6)[i] * h, np.eye(6)[j] * h
            H[i, j] = (mixture_loglik(t0 + ei + ej, x, y) - mixture_loglik(t0 + ei - ej, x, y)
                       - mixture_loglik(t0 - ei + ej, x, y) + mixture_loglik(t0 - ei - ej, x, y)) / (4 * h * h)
    ref = np.sqrt(np.diag(np.linalg.inv(-H)))
    np.testing.assert_allclose(np.sort(se), np.sort(ref), rtol=0.02)
    # predictions: the mixture mean Σ_l π_l(x) exp(η_l(x)), against NumPy
    grid = np.linspace(-0.9, 0.9, 7)[:, None]
    gb, gs, a0, b0, a1, b1 = flat(est.params_)
    p1 = expit(gb + gs * grid[:, 0])
    want = (1 - p1) * np.exp(a0 + b0 * grid[:, 0]) + p1 * np.exp(a1 + b1 * grid[:, 0])
    np.testing.assert_allclose(est.predict(grid), want, rtol=1e-4)
    assert np.all(np.isfinite(est.predict_std(grid)))
    with pytest.raises(ValueError, match="positive"):
        hme.HMERegressor(depth=1, expert=NAME).fit(x, -y)


def test_nuts_samples_the_new_family(em_fit, data):
    from hme import bayes

    x, y = data
    spec, res = em_fit
    x_mean = x.mean(0)
    xc = x - x_mean
    centred = hme.params.center_params(spec, jax.device_get(res.params), jnp.asarray(x_mean))
    scale = bayes.data_scale(spec, xc, np.log(y))
    samples, _ = bayes.run_nuts(spec, jnp.asarray(xc), jnp.asarray(y), scale, bayes.Priors(), centred,
                                num_warmup=150, num_samples=150, num_chains=1, seed=0)
    coef = samples["coef"][0, :, :, 0, 0]  # (draws, leaves)
    assert np.all(np.isfinite(coef))
    est = np.sort(coef.mean(0))
    np.testing.assert_allclose(est, np.sort(TRUTH["slope"]), atol=0.4)


@pytest.mark.parametrize("gate, depth", [(("softmax", "laplace"), 2), ("gaussian", 1)])
def test_estimators_take_every_registered_gate_and_save_it(gate, depth, tmp_path):
    """Per-level tuples and the Gaussian gate go through the estimator, its BIC count and save/load."""
    rng = np.random.default_rng(1)
    if gate == "gaussian":  # data from the model: two Gaussian clusters of inputs, one regime each
        regime = rng.integers(2, size=400).astype(bool)
        X = np.where(regime[:, None], 0.5, -0.5) * np.array([1.0, 0.0]) + 0.25 * rng.normal(size=(400, 2))
    else:
        X = rng.uniform(-1, 1, size=(400, 2))
        regime = X[:, 0] > 0
    y = np.where(regime, 1 + 2 * X[:, 1], -1 - X[:, 1]) + 0.1 * rng.normal(size=400)
    est = hme.HMERegressor(depth=depth, gate=gate, n_init=1, random_state=0, max_iter=1000, alpha=0.0,
                           gate_alpha=0.0).fit(X, y)
    spec = hme.ModelSpec(tree=hme.TreeSpec.complete(depth, 2), n_features=2, gate=gate)
    assert spec.gate == est.get_params()["gate"] or tuple(spec.gate) == tuple(est.get_params()["gate"])
    # the free-parameter count against the families' definitions, counted by hand
    if depth == 2:  # softmax root: 1 bias + 2 slopes; each Laplace gate: 1 bias + 2 keys of 2
        want_gates = 3 + 2 * (1 + 4)
    else:  # one Gaussian gate: 1 free log-weight, 2 means of 2, 2 covariances of 3
        want_gates = 1 + 4 + 6
    want = want_gates + spec.tree.n_leaves * (3 + 1)  # each leaf: intercept, 2 slopes, variance
    assert hme.inference.n_free_parameters(spec) == want
    # at least the R² of the true model's mean E[y | x] = Σ_z P(z | x) μ_z(x), less 0.01
    if gate == "gaussian":
        d1 = np.sum((X - [0.5, 0.0]) ** 2, 1)
        d0 = np.sum((X + [0.5, 0.0]) ** 2, 1)
        p1 = expit((d0 - d1) / (2 * 0.25**2))
    else:
        p1 = (X[:, 0] > 0).astype(float)
    oracle = p1 * (1 + 2 * X[:, 1]) + (1 - p1) * (-1 - X[:, 1])
    r2_truth = 1 - np.sum((y - oracle) ** 2) / np.sum((y - y.mean()) ** 2)
    assert est.score(X, y) >= r2_truth - 0.01
    path = tmp_path / "model.hme"
    est.save(path)
    back = hme.load(path)
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
