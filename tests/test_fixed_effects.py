"""Fixed effects, ``shared_coef`` (issue 18): the tied M-step solve against a direct constrained solve, monotone EM,
recovery of a shared slope, the gradient solver, persistence, bad input, and flexmix's ``FLXMRglmfix`` on NPreg
(its best of 10 starts and ``refit()``'s estimates and standard errors, stored by ``benchmarks/bench_glmfix.py``)."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, dtypes

import hme
from hme import HMERegressor
from hme.families.linear import tied_solve


def test_tied_solve_is_the_constrained_minimiser(rng):
    """Against the full (L q)-dimensional system written through the tying matrix M (θ = M φ):
    φ = (Mᵀ A M)⁻¹ Mᵀ b, with A and b block-diagonal over leaves."""
    L, q, k, shared = 3, 5, 2, (1, 3)
    R = rng.normal(size=(L, q, q))
    A = R @ R.transpose(0, 2, 1) + q * np.eye(q)
    b = rng.normal(size=(L, q, k))
    own = [j for j in range(q) if j not in shared]
    n_phi = L * len(own) + len(shared)
    M = np.zeros((L * q, n_phi))
    for l in range(L):
        for i, j in enumerate(own):
            M[l * q + j, l * len(own) + i] = 1
        for i, j in enumerate(shared):
            M[l * q + j, L * len(own) + i] = 1
    big = np.zeros((L * q, L * q))
    for l in range(L):
        big[l * q:(l + 1) * q, l * q:(l + 1) * q] = A[l]
    phi = np.linalg.solve(M.T @ big @ M, M.T @ b.reshape(L * q, k))
    ref = (M @ phi).reshape(L, q, k)
    np.testing.assert_allclose(np.asarray(tied_solve(A, b, shared)), ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(tied_solve(A, b, ())), np.linalg.solve(A, b), rtol=1e-9)


def _shared_slope_data(rng, n, expert="gaussian"):
    """Two regimes split by a softmax gate on x0: own intercepts and x0 slopes, a common slope 1.5 on x1."""
    X = rng.uniform(-2, 2, (n, 2))
    z = rng.uniform(size=n) < 1 / (1 + np.exp(-3 * X[:, 0]))
    eta = np.where(z, 1 + 2 * X[:, 0], -1 - X[:, 0]) + 1.5 * X[:, 1]
    if expert == "poisson":
        return X, rng.poisson(np.exp(0.3 * eta)).astype(float)
    return X, eta + rng.normal(0, 0.3, n)


@pytest.mark.parametrize("expert", ["gaussian", "student_t", "poisson"])
def test_shared_slope_is_recovered_and_em_is_monotone(expert, rng):
    X, y = _shared_slope_data(rng, 3000, expert)
    est = HMERegressor(depth=1, expert=expert, shared_coef=[1], alpha=0, n_init=2, random_state=0).fit(X, y)
    coef = est.params_.experts.coef[:, :, 0]
    assert coef[0, 1] == coef[1, 1]  # tied exactly, not approximately
    truth = 1.5 * (0.3 if expert == "poisson" else 1.0)
    se = est.summary(X, y).loc["shared: x1", "std_err"]
    assert abs(coef[0, 1] - truth) < 4 * se
    assert np.all(np.diff(est.lower_bounds_) >= -1e-8 * np.abs(est.lower_bounds_[1:]))
    # the free leaf slopes on x0 are still their own
    assert abs(coef[0, 0] - coef[1, 0]) > 0.5 * (0.3 if expert == "poisson" else 1.0)


def test_shared_fit_costs_likelihood_and_parameters_like_the_constraint_says(rng):
    """The tied model is nested in the free one: it counts L - 1 fewer parameters per shared column, its
    log-likelihood is at most the free fit's, and when the truth is tied the gap is small (a likelihood-ratio
    statistic of 1 degree of freedom)."""
    X, y = _shared_slope_data(rng, 2000)
    kw = dict(depth=1, alpha=0, gate_alpha=0, n_init=3, random_state=0, tol=1e-10)
    free = HMERegressor(**kw).fit(X, y)
    tied = HMERegressor(shared_coef=[1], **kw).fit(X, y)
    assert tied._n_parameters(tied._spec) == free._n_parameters(free._spec) - 1
    lr = 2 * (free.log_likelihood_ - tied.log_likelihood_)
    assert -1e-6 <= lr < 15.0  # chi2(1) quantile 0.9997 is about 13


@pytest.mark.parametrize("dtype", dtypes())
def test_dtypes_and_depth_two(dtype, rng):
    X, y = _shared_slope_data(rng, 1500)
    est = HMERegressor(depth=2, shared_coef=[1], random_state=0).fit(X.astype(dtype), y.astype(dtype))
    c = est.params_.experts.coef
    assert c.dtype == dtype and np.all(c[:, 1, 0] == c[0, 1, 0])
    assert np.isfinite(est.log_likelihood_)


def test_gradient_solver_ties_and_reaches_em(rng):
    X, y = _shared_slope_data(rng, 1500)
    kw = dict(depth=1, shared_coef=[1], alpha=0, gate_alpha=0, random_state=0, tol=1e-10, max_iter=3000)
    em = HMERegressor(**kw).fit(X, y)
    gr = HMERegressor(solver="gradient", **kw).fit(X, y)
    c = gr.params_.experts.coef
    assert np.all(c[:, 1, 0] == c[0, 1, 0])
    assert gr.log_likelihood_ >= em.log_likelihood_ - 1e-3 * len(y)


def test_save_load_keeps_the_fixed_effects(tmp_path, rng):
    X, y = _shared_slope_data(rng, 800)
    est = HMERegressor(depth=1, shared_coef=[1], random_state=0).fit(X, y)
    est.save(tmp_path / "m.hme")
    back = hme.load(tmp_path / "m.hme")
    assert back._spec.shared_coef == (1,)
    np.testing.assert_array_equal(back.predict(X), est.predict(X))


def test_bad_fixed_effects_are_refused(rng):
    X, y = _shared_slope_data(rng, 200)
    with pytest.raises(ValueError, match="out of range"):
        HMERegressor(depth=1, shared_coef=[5]).fit(X, y)
    with pytest.raises(ValueError, match="not among the expert features"):
        HMERegressor(depth=1, shared_coef=[1], expert_features=[0]).fit(X, y)
    with pytest.raises(ValueError, match="unknown feature name"):
        HMERegressor(depth=1, shared_coef=["age"]).fit(pd.DataFrame(X, columns=["a", "b"]), y)
    with pytest.raises(ValueError, match="one output"):
        HMERegressor(depth=1, shared_coef=[1]).fit(X, np.c_[y, y])
    with pytest.raises(ValueError, match="fixed effects"):
        hme.make_spec(2, depth=1, expert="categorical", n_targets=3, shared_coef=(0,))


# -- flexmix's FLXMRglmfix on NPreg ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def npreg():
    with open(os.path.join(DATA, "flexmix_npreg.json")) as fh:
        ref = json.load(fh)
    return pd.read_csv(os.path.join(DATA, "NPreg.csv")), ref


@pytest.mark.parametrize("family", ["gaussian", "poisson"])
def test_npreg_reaches_flexmix_and_matches_its_refit(family, npreg):
    """Default start (3 runs): log-likelihood at least flexmix's best of 10 starts; estimates and standard errors
    as flexmix's ``refit()`` (optim on all parameters, SEs from its Hessian); the same parameter count."""
    data, ref = npreg
    ref = ref[family]
    if family == "gaussian":
        X, y = pd.DataFrame({"x": data["x"], "x2": data["x"] ** 2}), data["yn"].to_numpy(float)
    else:
        X, y = pd.DataFrame({"x": data["x"]}), data["yp"].to_numpy(float)
    est = HMERegressor(depth=1, expert=family, gate_features=[], shared_coef=["x"], alpha=0, gate_alpha=0,
                       n_init=3, max_iter=2000, tol=1e-10, random_state=0).fit(X, y)
    assert est.log_likelihood_ >= ref["loglik"] - 1e-6
    assert est._n_parameters(est._spec) == int(ref["df"])
    summ = est.summary(X, y)
    e = est.params_.experts
    terms = {"(Intercept)": "intercept", "x": "x", "I(x^2)": "x2"}
    for k in (1, 2):
        names = [terms[n.strip()] for n in ref[f"refit_names{k}"]]
        fx = dict(zip(names, zip(ref[f"refit_est{k}"], ref[f"refit_se{k}"], strict=True), strict=True))
        leaf = int(np.argmin(np.abs(e.intercept[:, 0] - fx["intercept"][0])))
        for term, (est_r, se_r) in fx.items():
            if term == "intercept":
                mine, label = e.intercept[leaf, 0], f"leaf {leaf}: intercept"
            else:
                j = list(X.columns).index(term)
                mine, label = e.coef[leaf, j, 0], ("shared: x" if term == "x" else f"leaf {leaf}: {term}")
            assert abs(mine - est_r) < 0.02 * se_r, (family, k, term)
            assert summ.loc[label, "std_err"] == pytest.approx(se_r, rel=0.01), (family, k, term)
