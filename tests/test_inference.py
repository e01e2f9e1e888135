"""Standard errors: the JAX observed information against finite differences and against the spread of
estimates over simulated replicates; the canonical leaf order."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import X64, load_csv

import hme
from hme.inference import canonicalize, free_parameters, observed_information

pytestmark = pytest.mark.skipif(not X64, reason="inference checks run in float64")


def _truth():
    spec = hme.make_spec(1, depth=1)
    params = hme.HMEParams(
        hme.GateParams(jnp.asarray([[0.0, 0.5]]), jnp.asarray([[[0.0], [3.0]]])),
        hme.ExpertParams(
            jnp.asarray([[1.0], [-1.0]]), jnp.asarray([[[2.0]], [[-1.5]]]), jnp.asarray([[[0.25]], [[0.16]]])
        ),
    )
    return spec, params


def _draw(spec, params, n, rng):
    X = rng.uniform(-1.5, 1.5, size=(n, 1))
    pi = np.asarray(hme.gate_path_probs(spec, params, X))
    leaf = (rng.uniform(size=n) < pi[:, 1]).astype(int)
    e = params.experts
    mu = np.asarray(e.intercept)[leaf, 0] + X[:, 0] * np.asarray(e.coef)[leaf, 0, 0]
    return X, mu + np.sqrt(np.asarray(e.cov)[leaf, 0, 0]) * rng.normal(size=n)


def test_observed_information_matches_finite_differences(rng):
    spec, truth = _truth()
    X, y = _draw(spec, truth, 400, rng)
    theta, names, info = observed_information(spec, truth, X, y)
    _, unflatten, _ = free_parameters(spec, truth)
    f = jax.jit(lambda th: hme.log_likelihood(spec, unflatten(th), X, y).sum())
    th = np.asarray(theta)
    P, h = len(th), 1e-4
    fd = np.zeros((P, P))
    for i in range(P):
        for j in range(P):
            ei, ej = np.eye(P)[i] * h, np.eye(P)[j] * h
            fd[i, j] = (f(th + ei + ej) - f(th + ei - ej) - f(th - ei + ej) + f(th - ei - ej)) / (4 * h * h)
    np.testing.assert_allclose(-np.asarray(info), fd, rtol=2e-4, atol=1e-3)
    assert names[0] == "gate 0 child 1: bias" and names[-1] == "leaf 1: variance"


@pytest.mark.parametrize("n_rep", [pytest.param(40, id="ci"), pytest.param(200, id="full", marks=pytest.mark.slow)])
def test_standard_errors_match_replicate_spread(n_rep):
    """The mean reported SE of each parameter is within 15% of the spread of its estimates over replicates
    (median over parameters; every parameter within 35% at 40 replicates, where the spread itself is only
    known to about ±11%)."""
    spec, truth = _truth()
    rng = np.random.default_rng(1)
    est, ses = [], []
    for r in range(n_rep):
        X, y = _draw(spec, truth, 1500, rng)
        reg = hme.HMERegressor(depth=1, n_init=2, random_state=r, tol=1e-9, max_iter=1000).fit(X, y)
        out = reg.summary(X, y)
        est.append(out["estimate"].to_numpy())
        ses.append(out["std_err"].to_numpy())
    est, ses = np.array(est), np.array(ses)
    ratio = est.std(0, ddof=1) / ses.mean(0)
    assert abs(np.median(ratio) - 1) < 0.15, ratio
    assert np.all(np.abs(ratio - 1) < 0.35), ratio


def test_canonical_order_is_the_same_model_and_the_same_table(rng):
    d = load_csv("tonedata.csv")
    X, y = d[["stretchratio"]].to_numpy(), d["tuned"].to_numpy()
    spec = hme.make_spec(1, depth=2)
    res = hme.fit_em(spec, X, y, n_init=3, random_state=0)
    canon = canonicalize(spec, res.params, X.mean(0))
    np.testing.assert_allclose(
        np.asarray(hme.log_likelihood(spec, canon, X, y)),
        np.asarray(hme.log_likelihood(spec, res.params, X, y)),
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        np.asarray(hme.predict_mean(spec, canon, X)), np.asarray(hme.predict_mean(spec, res.params, X)), rtol=1e-10
    )
    # siblings are ordered by mean prediction at the reference point
    key = np.asarray(canon.experts.intercept)[:, 0] + np.asarray(canon.experts.coef)[:, 0, 0] * X.mean()
    assert key[0] <= key[1] and key[2] <= key[3] and key[:2].mean() <= key[2:].mean()
    # fits from different seeds that reach the same optimum print the same table
    a = hme.HMERegressor(depth=1, n_init=10, random_state=0, tol=1e-10, max_iter=2000).fit(X, y)
    b = hme.HMERegressor(depth=1, n_init=10, random_state=7, tol=1e-10, max_iter=2000).fit(X, y)
    ta, tb = a.summary(X, y), b.summary(X, y)
    assert list(ta.index) == list(tb.index)
    np.testing.assert_allclose(ta["estimate"], tb["estimate"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ta["std_err"], tb["std_err"], rtol=1e-3)


def test_sandwich_and_observed_agree_when_the_model_is_right(rng):
    spec, truth = _truth()
    X, y = _draw(spec, truth, 3000, rng)
    reg = hme.HMERegressor(depth=1, n_init=2, random_state=0, tol=1e-9, max_iter=1000).fit(X, y)
    obs = reg.summary(X, y)["std_err"].to_numpy()
    sand = reg.summary(X, y, se="sandwich")["std_err"].to_numpy()
    np.testing.assert_allclose(sand, obs, rtol=0.25)


def test_summary_is_a_table_with_wald_intervals(rng):
    """summary() returns a DataFrame (no printing) whose intervals are estimate ± z·SE, variances on the log
    scale, and whose attrs carry the model-level numbers."""
    spec, truth = _truth()
    X, y = _draw(spec, truth, 800, rng)
    reg = hme.HMERegressor(depth=1, n_init=2, random_state=0, tol=1e-9, max_iter=1000).fit(X, y)
    t = reg.summary(X, y, ci_level=0.9)
    assert list(t.columns) == ["estimate", "std_err", "z", "p_value", "ci_lower", "ci_upper"]
    assert t.index[0] == "gate 0 child 1: bias" and t.index[-1] == "leaf 1: variance"
    assert np.all(t["std_err"] > 0)
    z90 = 1.6448536269514722
    coef = ~t.index.str.endswith("variance")
    np.testing.assert_allclose(t["ci_lower"][coef], (t["estimate"] - z90 * t["std_err"])[coef], rtol=1e-12)
    np.testing.assert_allclose(t["z"][coef], (t["estimate"] / t["std_err"])[coef], rtol=1e-12)
    var = t[~coef]
    assert np.all(var["ci_lower"] > 0) and np.all(var["ci_lower"] < var["estimate"]) and np.all(var["z"].isna())
    np.testing.assert_allclose(
        np.log(var["ci_upper"] / var["estimate"]), z90 * var["std_err"] / var["estimate"], rtol=1e-12
    )
    assert t.attrs["log_likelihood"] == pytest.approx(float(reg.log_likelihood(X, y).sum()))
    assert t.attrs["bic"] == pytest.approx(reg.bic(X, y)) and t.attrs["not_identified"] == []
    np.testing.assert_allclose(np.sqrt(np.diag(t.attrs["covariance"])), t["std_err"], rtol=1e-12)


def test_parameters_the_data_do_not_identify_get_nan_and_a_warning(rng):
    """A duplicated input column: only the sum of its two expert slopes is identified. The pseudo-inverse used
    before gave each half the SE of the sum; now both are NaN, named in a warning, and every other parameter keeps
    the SE of the fit without the duplicate (the same model)."""
    spec, truth = _truth()
    X, y = _draw(spec, truth, 800, rng)
    X2 = np.column_stack([X, rng.normal(size=len(X))])
    X3 = np.column_stack([X2, X2[:, 1]])  # column 2 duplicates column 1
    # (nearly) no ridge: with the default ridges the prior identifies every coefficient, duplicates included
    kw = dict(depth=1, n_init=2, random_state=0, tol=1e-10, max_iter=2000, gate_features=[0], alpha=1e-12,
              gate_alpha=1e-12, shrink_to="zero")
    ref = hme.HMERegressor(**kw).fit(X2, y)
    dup = hme.HMERegressor(**kw).fit(X3, y)
    with pytest.warns(hme.NotIdentifiedWarning, match="leaf 0: x1.*leaf 0: x2"):
        t = dup.summary(X3, y)
    bad = t.index[t["std_err"].isna()]
    assert sorted(bad) == ["leaf 0: x1", "leaf 0: x2", "leaf 1: x1", "leaf 1: x2"]
    assert t.attrs["not_identified"] == list(bad)
    assert not np.any(t["std_err"] == 0)
    r = ref.summary(X2, y)
    common = [nm for nm in r.index if nm in t.index and nm not in bad]
    np.testing.assert_allclose(t.loc[common, "std_err"], r.loc[common, "std_err"], rtol=2e-3)


def test_summary_of_diabetes_depth_2_has_no_zero_standard_errors():
    """Issue 12: 14 of 81 standard errors were exactly 0 (a clipped pseudo-inverse of a singular information)."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    reg = hme.HMERegressor(depth=2, random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hme.NotIdentifiedWarning)
        t = reg.summary(X, y)
    assert len(t) == 81
    se = t["std_err"].to_numpy()
    assert not np.any(se == 0)
    assert np.all(np.isfinite(se) == ~t.index.isin(t.attrs["not_identified"]))


def test_free_parameters_follow_each_levels_gate_family(rng):
    """Softmax above Laplace (issue 13's bug: the family test looked at the whole tree, so a mixed tree had its
    Laplace keys fixed). Level 0 (softmax): child 1's bias and slopes are free, child 0 is the reference; level 1
    (Laplace): child 1's bias and both children's keys are free. The Hessian over exactly these parameters matches
    finite differences, and the canonical order keeps the softmax reference at zero and the likelihood unchanged."""
    p = 2
    spec = hme.make_spec(p, depth=2, gate=("softmax", "laplace"))
    params = hme.HMEParams(
        hme.GateParams(
            jnp.asarray([[0.0, 0.3], [0.0, -0.2], [0.0, 0.4]]),
            jnp.asarray([[[0.0, 0.0], [2.0, -1.0]], [[-0.8, 0.1], [0.7, 0.5]], [[0.2, -0.9], [-0.3, 0.8]]]),
        ),
        hme.ExpertParams(
            jnp.asarray([[2.0], [1.5], [-1.0], [0.5]]),  # the right subtree predicts less: canonical order swaps
            jnp.asarray(0.1 * rng.normal(size=(4, p, 1))),
            jnp.asarray(np.full((4, 1, 1), 0.3)),
        ),
    )
    theta, unflatten, names = free_parameters(spec, params)
    n_gate = (1 + p) + 2 * (1 + 2 * p)
    assert len(names) == n_gate + 4 * (1 + p) + 4
    assert sum("coef" in nm for nm in names[:n_gate]) == p and sum("key" in nm for nm in names[:n_gate]) == 4 * p
    assert "gate 1 child 0: key x0" in names and "gate 0 child 0: coef x0" not in names
    back = unflatten(theta)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    X = rng.uniform(-1.5, 1.5, size=(300, p))
    y = rng.normal(size=300)
    _, _, info = observed_information(spec, params, X, y)
    f = jax.jit(lambda th: hme.log_likelihood(spec, unflatten(th), X, y).sum())
    th, h = np.asarray(theta), 1e-4
    for i in range(len(th)):  # the diagonal, every parameter
        e = np.eye(len(th))[i] * h
        fd = (f(th + e) - 2 * f(th) + f(th - e)) / h**2
        np.testing.assert_allclose(-np.asarray(info)[i, i], fd, rtol=1e-3, atol=1e-3)
    canon = canonicalize(spec, params, X.mean(0))
    np.testing.assert_allclose(np.asarray(canon.gates.weight)[0], [[0.0, 0.0], [-2.0, 1.0]])  # swapped, re-referenced
    ll_canon, ll = hme.log_likelihood(spec, canon, X, y), hme.log_likelihood(spec, params, X, y)
    np.testing.assert_allclose(np.asarray(ll_canon), np.asarray(ll), rtol=1e-10)


def test_gaussian_gates_get_a_clear_error_not_an_index_error(rng):
    """Gaussian gates' parameters map to a vector and back (their covariances' upper triangles, named; the
    Bayesian summary tabulates them), but standard errors are refused with a clear message."""
    spec = hme.make_spec(2, depth=1, gate="gaussian")
    p = hme.params.zeros_params(spec, jnp.float64 if X64 else jnp.float32)
    theta, unflatten, names = free_parameters(spec, p, ["a", "b"])
    assert "gate 0 child 1: cov[a, b]" in names and len(set(names)) == len(names)
    back = unflatten(theta)
    for x, z in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(p), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(z))
    X, y = rng.normal(size=(30, 2)), rng.normal(size=30)
    with pytest.raises(ValueError, match="Gaussian gates"):
        hme.inference.standard_errors(spec, p, X, y)
