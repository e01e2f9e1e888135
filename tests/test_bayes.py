"""Bayesian HMEs (numpyro): the likelihood is the core's; NUTS recovers a known HME; SVI's ELBO improves."""

from functools import partial

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("numpyro")
from helpers import random_params  # noqa: E402
from numpyro import handlers  # noqa: E402

import hme  # noqa: E402
from hme import bayes  # noqa: E402

# truth on raw inputs, leaves in canonical order (leaf 0 predicts -1 at x = 0, leaf 1 predicts +1)
TRUTH = {"gate_bias": 0.0, "gate_weight": 3.0, "intercept": (-1.0, 1.0), "coef": (-1.0, 2.0), "sigma": (0.5, 0.3)}


def _simulate(n, rng):
    X = rng.uniform(-2, 2, (n, 1))
    z = rng.uniform(size=n) < 1 / (1 + np.exp(-3 * X[:, 0]))
    y = np.where(z, 1 + 2 * X[:, 0], -1 - X[:, 0]) + np.where(z, 0.3, 0.5) * rng.normal(size=n)
    return X, y


@pytest.mark.parametrize("gate,expert", [("softmax", "gaussian"), ("laplace", "gaussian"), ("softmax", "categorical"),
                                         ("softmax", "poisson"), ("laplace", "student_t")])
def test_numpyro_likelihood_is_the_cores(gate, expert, rng):
    spec = hme.make_spec(2, depth=2, gate=gate, expert=expert, n_targets=3 if expert == "categorical" else 1)
    p = random_params(spec, rng)
    if expert in ("gaussian", "student_t"):  # the Bayesian model's covariance is σ² for one output
        cov = jnp.asarray(rng.uniform(0.2, 1.0, size=(spec.tree.n_leaves, 1, 1)))
        df = jnp.asarray(rng.uniform(2, 9, size=spec.tree.n_leaves)) if expert == "student_t" else None
        p = p._replace(experts=p.experts._replace(cov=cov, df=df))
    X = rng.normal(size=(40, 2))
    y = {"categorical": rng.integers(0, 3, 40), "poisson": rng.poisson(2.0, 40).astype(float)}.get(
        expert, rng.normal(size=40))
    scale = bayes.data_scale(spec, X, y)
    sites = bayes.sites_from_params(spec, p)
    model = handlers.substitute(partial(bayes.hme_model, spec), data=sites)
    tr = handlers.trace(model).get_trace(jnp.asarray(X), jnp.asarray(y), scale, bayes.Priors())
    got = float(jnp.sum(tr["y"]["fn"].log_prob(tr["y"]["value"])))
    want = float(np.sum(hme.log_likelihood(spec, p, X, y)))
    assert got == pytest.approx(want, rel=1e-9)


def _spd(rng, L, m):
    A = rng.normal(size=(L, m, m))
    return A @ A.transpose(0, 2, 1) + 0.5 * np.eye(m)


@pytest.mark.parametrize("expert", ["gaussian", "student_t"])
def test_numpyro_likelihood_is_the_cores_for_several_outputs(expert, rng):
    """Full noise covariances through the (σ, LKJ Cholesky) sites: the y density is the core's log p(y | x)."""
    spec = hme.make_spec(2, depth=2, expert=expert, n_targets=3)
    p = random_params(spec, rng)
    df = jnp.asarray(rng.uniform(2, 9, size=spec.tree.n_leaves)) if expert == "student_t" else None
    p = p._replace(experts=p.experts._replace(cov=jnp.asarray(_spd(rng, spec.tree.n_leaves, 3)), df=df))
    X, y = rng.normal(size=(40, 2)), rng.normal(size=(40, 3))
    scale = bayes.data_scale(spec, X, y)
    sites = bayes.sites_from_params(spec, p)
    np.testing.assert_allclose(bayes.params_from_sample(spec, sites).experts.cov, p.experts.cov, rtol=1e-10)
    model = handlers.substitute(partial(bayes.hme_model, spec), data=sites)
    tr = handlers.trace(model).get_trace(jnp.asarray(X), jnp.asarray(y), scale, bayes.Priors())
    got = float(jnp.sum(tr["y"]["fn"].log_prob(tr["y"]["value"])))
    assert got == pytest.approx(float(np.sum(hme.log_likelihood(spec, p, X, y))), rel=1e-9)


@pytest.mark.parametrize("p_in", [1, 3])
def test_numpyro_gaussian_gate_model_is_the_joint_likelihood(p_in, rng):
    """Gaussian gates: the y site is log p(y | x) and the factor "x" is Σ_t log Σ_c π_c N(x_t | c_c, Γ_c), both
    against an independent SciPy computation."""
    from scipy import stats
    from scipy.special import logsumexp

    spec = hme.make_spec(p_in, depth=1, branching=3, gate="gaussian")
    p = random_params(spec, rng)
    log_pi = np.log(rng.dirichlet(np.ones(3)))
    gates = p.gates._replace(bias=jnp.asarray(log_pi[None]), cov=jnp.asarray(_spd(rng, 3, p_in)[None]))
    p = p._replace(gates=gates, experts=p.experts._replace(cov=jnp.asarray(rng.uniform(0.2, 1, (3, 1, 1)))))
    X, y = rng.normal(size=(40, p_in)), rng.normal(size=40)
    sites = bayes.sites_from_params(spec, p)
    model = handlers.substitute(partial(bayes.hme_model, spec), data=sites)
    tr = handlers.trace(model).get_trace(jnp.asarray(X), jnp.asarray(y), bayes.data_scale(spec, X, y), bayes.Priors())
    g_mean, g_cov = np.asarray(gates.weight[0]), np.asarray(gates.cov[0])
    dens = np.stack([stats.multivariate_normal.logpdf(X, g_mean[c], g_cov[c])
                     for c in range(3)], 1).reshape(40, 3)
    log_px = float(tr["x"]["fn"].log_prob(tr["x"]["value"]))
    assert log_px == pytest.approx(np.sum(logsumexp(dens + log_pi, 1)), rel=1e-9)
    mu = np.stack([p.experts.intercept[c, 0] + X @ p.experts.coef[c, :, 0] for c in range(3)], 1)
    sd = np.sqrt(np.asarray(p.experts.cov)[:, 0, 0])
    post = dens + log_pi - logsumexp(dens + log_pi, 1, keepdims=True)
    want = np.sum(logsumexp(post + stats.norm.logpdf(y[:, None], mu, sd), 1))
    assert float(jnp.sum(tr["y"]["fn"].log_prob(tr["y"]["value"]))) == pytest.approx(want, rel=1e-9)


def _check_against_truth(b, n_sd=3.0):
    post = b.posterior_params_
    draws = {
        "gate_bias": post.gates.bias[:, 0, 1],
        "gate_weight": post.gates.weight[:, 0, 1, 0],
        "intercept": post.experts.intercept[:, :, 0],
        "coef": post.experts.coef[:, :, 0, 0],
        "sigma": np.sqrt(post.experts.cov[:, :, 0, 0]),
    }
    for name, d in draws.items():
        mean, sd = d.mean(axis=0), d.std(axis=0)
        assert np.all(np.abs(mean - np.asarray(TRUTH[name])) <= n_sd * sd), (name, mean, sd)


def test_nuts_recovers_a_depth_one_hme_and_covers_fresh_draws():
    rng = np.random.default_rng(0)
    X, y = _simulate(300, rng)
    b = hme.BayesianHMERegressor(depth=1, method="nuts", num_warmup=300, num_samples=300, num_chains=2, random_state=0)
    b.fit(X, y)
    assert b.rhat_ < 1.01
    assert b.divergences_ == 0
    _check_against_truth(b)
    Xn, yn = _simulate(4000, np.random.default_rng(1))
    lo, hi = b.predict_interval(Xn, 0.9)
    assert abs(np.mean((yn >= lo) & (yn <= hi)) - 0.9) <= 0.04
    # predict (the average of the draws' mixture means) agrees with the mean of posterior-predictive draws
    draws = b.predictive_samples(Xn[:200], random_state=3)
    assert draws.shape == (600, 200)
    assert np.mean(np.abs(draws.mean(axis=0) - b.predict(Xn[:200]))) < 0.1


def _simulate_family(expert, n, rng):
    """Draws from a two-expert HME of ``expert`` (gate slope 3 on x ~ U[-2, 2])."""
    X = rng.uniform(-2, 2, (n, 1))
    z = rng.uniform(size=n) < 1 / (1 + np.exp(-3 * X[:, 0]))
    eta = np.where(z, 1 + 0.5 * X[:, 0], 0.5 - 0.3 * X[:, 0])
    if expert == "poisson":
        return X, rng.poisson(np.exp(eta)).astype(float)
    noise = rng.standard_t(4, size=n) if expert == "student_t" else rng.normal(size=n)
    return X, 2 * eta + np.where(z, 0.3, 0.5) * noise


@pytest.mark.parametrize("expert", ["poisson", "student_t"])
def test_nuts_for_other_expert_families_mixes_and_covers_fresh_draws(expert):
    """Posterior-predictive 90% intervals of a depth-1 HME cover 90% ± 5% of fresh draws from the truth (docs/fitting.md
    has the figures per family)."""
    X, y = _simulate_family(expert, 300, np.random.default_rng(0))
    b = hme.BayesianHMERegressor(depth=1, expert=expert, num_warmup=250, num_samples=250, num_chains=2,
                                 random_state=0).fit(X, y)
    assert b.rhat_ < 1.05 and b.divergences_ <= 5, (b.rhat_, b.divergences_)
    Xn, yn = _simulate_family(expert, 3000, np.random.default_rng(1))
    lo, hi = b.predict_interval(Xn, 0.9)
    cover = np.mean((yn >= lo) & (yn <= hi))
    assert 0.85 <= cover <= 0.97, cover  # Poisson intervals are discrete: at least the nominal level
    if expert == "student_t":
        assert "leaf 0: df" in list(b.summary().index)


def _simulate_two_outputs(n, rng, expert="gaussian"):
    """A two-expert HME with two correlated outputs: noise correlation 0.5 in the expert of x < 0 (it predicts
    y0 = -1 at x = 0: canonical leaf 0), -0.4 in the expert of x > 0 (y0 = +1 at x = 0: leaf 1)."""
    X = rng.uniform(-2, 2, (n, 1))
    z = rng.uniform(size=n) < 1 / (1 + np.exp(-3 * X[:, 0]))
    mean = np.where(z[:, None], np.c_[1 + 2 * X[:, 0], -1 + X[:, 0]], np.c_[-1 - X[:, 0], 2 + 0 * X[:, 0]])
    chol = np.linalg.cholesky(np.array([[[0.09, 0.06], [0.06, 0.16]], [[0.16, -0.064], [-0.064, 0.16]]]))
    e = rng.standard_t(5, size=(n, 2)) if expert == "student_t" else rng.normal(size=(n, 2))
    return X, mean + np.einsum("nij,nj->ni", chol[z.astype(int)], e)


@pytest.mark.parametrize("expert", ["gaussian", "student_t"])
def test_nuts_for_several_outputs_covers_fresh_draws_per_output(expert):
    X, Y = _simulate_two_outputs(300, np.random.default_rng(0), expert)
    b = hme.BayesianHMERegressor(depth=1, expert=expert, num_warmup=250, num_samples=250, num_chains=2,
                                 random_state=0).fit(X, Y)
    assert b.rhat_ < 1.05 and b.divergences_ <= 5, (b.rhat_, b.divergences_)
    Xn, Yn = _simulate_two_outputs(3000, np.random.default_rng(1), expert)
    assert b.predict(Xn).shape == (3000, 2)
    lo, hi = b.predict_interval(Xn, 0.9)
    cover = np.mean((Yn >= lo) & (Yn <= hi), axis=0)
    assert np.all((cover >= 0.85) & (cover <= 0.95)), cover
    # the noise correlation of each expert is recovered
    cov = b.posterior_params_.experts.cov
    corr = cov[:, :, 0, 1] / np.sqrt(cov[:, :, 0, 0] * cov[:, :, 1, 1])
    mean, sd = corr.mean(0), corr.std(0)
    assert np.all(np.abs(mean - np.array([0.5, -0.4])) <= 3 * sd + 0.02), (mean, sd)


def test_nuts_with_gaussian_gates_samples_the_joint_model_and_covers_fresh_draws():
    X, y = _simulate_family("gaussian", 300, np.random.default_rng(0))
    b = hme.BayesianHMERegressor(depth=1, gate="gaussian", num_warmup=250, num_samples=250, num_chains=2,
                                 random_state=0).fit(X, y)
    assert b.rhat_ < 1.05 and b.divergences_ <= 5, (b.rhat_, b.divergences_)
    Xn, yn = _simulate_family("gaussian", 3000, np.random.default_rng(1))
    lo, hi = b.predict_interval(Xn, 0.9)
    assert 0.85 <= np.mean((yn >= lo) & (yn <= hi)) <= 0.95
    table = b.summary()
    assert "gate 0 child 1: cov[x0, x0]" in table.index
    # the gate means sit in the two halves of the input range, with weights near the regimes' shares
    means = np.sort(b.posterior_params_.gates.weight[:, 0, :, 0].mean(0))
    assert means[0] < -0.3 and means[1] > 0.3


def test_to_arviz_is_inference_data_that_arviz_summarises_and_plots():
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        az = pytest.importorskip("arviz")
    X, y = _simulate(200, np.random.default_rng(0))
    b = hme.BayesianHMERegressor(depth=1, method="svi", svi_steps=300, num_samples=100, random_state=0).fit(X, y)
    idata = b.to_arviz()
    table = az.summary(idata)
    assert {"intercept[0, 0]", "sigma[1]"} <= set(table.index) and np.all(np.isfinite(table["mean"]))
    with warnings.catch_warnings():  # ArviZ 0.23 with matplotlib 3.11: a deprecation inside ArviZ's plotting
        warnings.simplefilter("ignore", DeprecationWarning)
        axes = az.plot_trace(idata, var_names=["intercept", "sigma"])
    assert np.asarray(axes).shape == (2, 2)


def test_unsupported_bayes_families_are_refused_before_fitting():
    with pytest.raises(ValueError, match="expert must be one of"):
        hme.BayesianHMERegressor(expert="categorical").fit(np.zeros((10, 1)), np.zeros(10))


@pytest.mark.parametrize("gate", ["softmax", "laplace"])
def test_svi_elbo_improves_and_intervals_are_near_nominal(gate):
    rng = np.random.default_rng(0)
    X, y = _simulate(300, rng)
    b = hme.BayesianHMERegressor(depth=1, gate=gate, method="svi", svi_steps=2000, num_samples=400, random_state=0)
    b.fit(X, y)
    assert np.mean(b.elbo_[-100:]) > np.mean(b.elbo_[:100])
    Xn, yn = _simulate(4000, np.random.default_rng(1))
    lo, hi = b.predict_interval(Xn, 0.9)
    assert abs(np.mean((yn >= lo) & (yn <= hi)) - 0.9) <= 0.05


def test_bayesian_classifier_probabilities():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, (300, 2))
    y = np.where(X[:, 0] > 0, X[:, 1] > 0.5, X[:, 1] < -0.5)
    b = hme.BayesianHMEClassifier(depth=1, method="svi", svi_steps=1500, num_samples=200, random_state=0).fit(X, y)
    P = b.predict_proba(X)
    assert P.dtype == np.float64 and np.all((P >= 0) & (P <= 1))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert list(b.classes_) == [False, True]
    t = b.summary()  # labelled rows, named as the point estimate's summary() (issue 12)
    assert list(t.columns) == ["mean", "sd", "ci_lower", "ci_upper", "n_eff", "r_hat"]
    assert list(t.index) == list(b.point_estimate_.summary(X, y).index)
    assert np.all(t["ci_lower"] <= t["mean"]) and np.all(t["mean"] <= t["ci_upper"])
    assert b.score(X, y) > 0.85
