"""The scikit-learn layer: contract checks, numbers from every method, bad input."""

import pickle
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_csv
from scipy.special import logsumexp
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import hme
from hme import HMEClassifier, HMERegressor

#: the (nearly) unpenalised maximum likelihood of the published references: the ridges of old
ML = dict(alpha=1e-6, gate_alpha=1e-4, shrink_to="zero")


def _toy_hme(n, rng):
    """Two regimes split by x0 with different lines: a depth-1 HME with known parameters."""
    spec = hme.make_spec(2, depth=1)
    truth = hme.HMEParams(
        hme.GateParams(jnp.asarray([[0.0, 0.0]]), jnp.asarray([[[0.0, 0.0], [4.0, 0.0]]])),
        hme.ExpertParams(
            jnp.asarray([[1.0], [-1.0]]),
            jnp.asarray([[[2.0], [0.5]], [[-1.0], [1.0]]]),
            jnp.asarray([[[0.09]], [[0.25]]]),
        ),
    )
    X = rng.uniform(-2, 2, size=(n, 2))
    pi = np.asarray(hme.gate_path_probs(spec, truth, X))
    leaf = (rng.uniform(size=n) < pi[:, 1]).astype(int)
    mu = np.asarray(truth.experts.intercept)[leaf, 0] + np.einsum(
        "np,np->n", X, np.asarray(truth.experts.coef)[leaf, :, 0]
    )
    y = mu + np.sqrt(np.asarray(truth.experts.cov)[leaf, 0, 0]) * rng.normal(size=n)
    return spec, truth, X, y


def test_fit_predict_equals_functional_core(rng):
    spec, truth, X, y = _toy_hme(500, rng)
    est = HMERegressor(depth=1, random_state=0).fit(X, y)
    box = (est.expert_input_min_, est.expert_input_max_)  # out_of_bounds="clip": each expert's own input range
    core = np.asarray(hme.predict_mean(est.spec_, est.params_, X, expert_box=box))[:, 0]
    np.testing.assert_allclose(est.predict(X), core, rtol=1e-12)
    np.testing.assert_allclose(
        est.log_likelihood(X, y),
        np.asarray(hme.log_likelihood(est.spec_, est.params_, X, y, expert_box=box)),
        rtol=1e-12,
    )
    est.set_params(out_of_bounds="extrapolate")  # the parametric model everywhere
    np.testing.assert_allclose(
        est.predict(X), np.asarray(hme.predict_mean(est.spec_, est.params_, X))[:, 0], rtol=1e-12
    )
    assert est.converged_ and est.n_iter_ == len(est.lower_bounds_) - 1
    assert np.all(np.diff(est.lower_bounds_) >= -1e-10 * np.abs(est.lower_bounds_[1:]))


def test_predict_interval_covers_fresh_draws(rng):
    """90% predictive intervals from a fitted HME cover 90% ± 2% of fresh draws from the true model."""
    spec, truth, X, y = _toy_hme(4000, rng)
    est = HMERegressor(depth=1, random_state=0, n_init=2).fit(X, y)
    _, _, Xn, yn = _toy_hme(20000, rng)
    lo, hi = est.predict_interval(Xn, coverage=0.9)
    cover = np.mean((yn >= lo) & (yn <= hi))
    assert abs(cover - 0.9) < 0.02, cover
    q = est.predict_quantiles(Xn[:50], [0.05, 0.5, 0.95])
    assert np.all(np.diff(q, axis=1) > 0)
    draws = est.sample_y(Xn[:2000], n_samples=1, random_state=0)[:, 0]
    cover_draws = np.mean((draws >= lo[:2000]) & (draws <= hi[:2000]))
    assert abs(cover_draws - 0.9) < 0.03


def test_predict_std_matches_sampled_spread(rng):
    spec, truth, X, y = _toy_hme(2000, rng)
    est = HMERegressor(depth=1, random_state=0).fit(X, y)
    Xt = X[:5]
    draws = est.sample_y(Xt, n_samples=20000, random_state=1)
    np.testing.assert_allclose(draws.std(1), est.predict_std(Xt), rtol=0.03)
    np.testing.assert_allclose(draws.mean(1), est.predict(Xt), atol=0.03)


def test_information_criteria_match_hand_computation(rng):
    spec, truth, X, y = _toy_hme(300, rng)
    est = HMERegressor(depth=1, random_state=0).fit(X, y)
    ll = est.set_params(out_of_bounds="extrapolate").log_likelihood(X, y).sum()  # the parametric model
    # gate: 1 free child x (2 slopes + bias) = 3; experts: 2 x (2 slopes + intercept) = 6; variances: 2
    k = 3 + 6 + 2
    np.testing.assert_allclose(est.bic(X, y), -2 * ll + k * np.log(300), rtol=1e-12)
    np.testing.assert_allclose(est.aic(X, y), -2 * ll + 2 * k, rtol=1e-12)
    h = est.posterior_leaf_proba(X, y)
    np.testing.assert_allclose(
        est.icl(X, y), est.bic(X, y) - 2 * np.sum(h * np.log(np.clip(h, 1e-300, None))), rtol=1e-12
    )
    np.testing.assert_allclose(ll, est.log_likelihood_, rtol=1e-9)


def test_tonedata_through_the_estimator():
    d = load_csv("tonedata.csv")
    # mixtools' hmeEM maximises the unpenalised likelihood: switch the default ridges off
    est = HMERegressor(depth=1, n_init=10, random_state=0, tol=1e-10, max_iter=2000, **ML).fit(
        d[["stretchratio"]], d["tuned"]
    )
    assert abs(est.log_likelihood_ - 142.848) < 1e-3
    assert list(est.feature_names_in_) == ["stretchratio"]


def test_intercept_only_gate_by_feature_names():
    d = load_csv("CO2data.csv")
    est = HMERegressor(depth=1, gate_features=[], expert_features=["GNP"], n_init=10, random_state=0, tol=1e-10,
                       max_iter=5000, **ML)
    est.fit(d[["GNP"]], d["CO2"])
    assert est.gate_coef_.shape == (1, 2, 0)
    assert abs(est.log_likelihood_ - (-66.93977)) < 1e-3


def test_classifier_labels_and_probabilities(rng):
    X = rng.normal(size=(300, 2))
    y = np.where(X[:, 0] * X[:, 1] > 0, "same", "diff")  # XOR: linear models fail, a depth-2 tree does not
    clf = HMEClassifier(depth=2, random_state=0, n_init=3, max_iter=500, alpha=1e-2).fit(X, y)
    assert list(clf.classes_) == ["diff", "same"]
    p = clf.predict_proba(X)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-10)
    assert clf.score(X, y) > 0.9
    yb = X[:, 0] > 0
    assert set(HMEClassifier(depth=1, random_state=0, alpha=1e-2).fit(X, yb).predict(X)) <= {True, False}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype, rng):
    spec, truth, X, y = _toy_hme(200, rng)
    est = HMERegressor(depth=1, random_state=0).fit(X.astype(dtype), y.astype(dtype))
    assert est.params_.experts.coef.dtype == dtype
    assert est.predict(X.astype(dtype)).dtype == dtype


def test_saturated_float32_probabilities_stay_in_the_unit_interval():
    """Well-separated classes in float32: summing mixed float32 probabilities rounds to 1 + 1 ulp, so the
    probabilities are renormalised in float64 from the log-space mixture."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        X = (rng.normal(size=(60, 3)) * 100).astype(np.float32)
        y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = HMEClassifier(depth=1, gate="laplace", random_state=0, max_iter=50).fit(X, y)
        p = est.predict_proba(X)
        assert p.dtype == np.float64 and np.all(p >= 0) and np.all(p <= 1)
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=0, atol=1e-12)
        assert np.all(np.isfinite(est.predict_log_proba(X)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("gate", ["softmax", "laplace"])
def test_breast_cancer_probabilities_are_proper(gate, dtype):
    """Issue 12: predict_proba on breast_cancer returned 1.0000000000000018 and log_loss raised. Every entry
    must lie in [0, 1], rows sum to 1 within 1e-12, and they must agree with the mixture formula
    Σ_l π_l(x) p_l(c | x) computed here from the leaf outputs."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.metrics import log_loss

    X, y = load_breast_cancer(return_X_y=True)
    X = ((X - X.mean(0)) / X.std(0)).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = HMEClassifier(depth=1, gate=gate, random_state=0, n_candidates=2, max_iter=30).fit(X, y)
    p = clf.predict_proba(X)
    assert p.dtype == np.float64 and np.all(p >= 0) and np.all(p <= 1)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=0, atol=1e-12)
    assert np.isfinite(log_loss(y, p))
    clf.set_params(out_of_bounds="extrapolate")  # the parametric mixture, which the reference below computes
    p = clf.predict_proba(X)
    Xd = X.astype(np.float64)
    eta = np.einsum("nf,lfk->nlk", Xd, clf.expert_coef_.astype(np.float64)) + clf.expert_intercept_
    eta = np.concatenate([np.zeros(eta.shape[:2] + (1,)), eta], axis=2)
    leaf = np.exp(eta - logsumexp(eta, axis=2, keepdims=True))
    mix = np.einsum("nl,nlc->nc", clf.predict_leaf_proba(X).astype(np.float64), leaf)
    np.testing.assert_allclose(p, mix, atol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), p, rtol=1e-12)


def test_sklearn_tools_work(rng):
    spec, truth, X, y = _toy_hme(300, rng)
    est = HMERegressor(depth=1, random_state=0)
    assert clone(est).get_params() == est.get_params()
    # softmax gates and linear experts are affine-equivariant: scaling the inputs gives the same fitted model
    direct = HMERegressor(depth=1, n_init=3, random_state=0).fit(X, y)
    pipe = make_pipeline(StandardScaler(), HMERegressor(depth=1, n_init=3, random_state=0)).fit(X, y)
    np.testing.assert_allclose(pipe.predict(X), direct.predict(X), rtol=1e-3, atol=1e-3)
    assert pipe.score(X, y) > 0.7
    scores = cross_val_score(HMERegressor(depth=1, n_init=3, random_state=0), X, y, cv=3)
    assert scores.mean() > 0.7
    with warnings.catch_warnings():
        # the over-specified depth-2 candidate (4 experts, 2 regimes) converges slowly; its honest warning is
        # not what this test is about
        warnings.simplefilter("ignore", ConvergenceWarning)
        gs = GridSearchCV(HMERegressor(random_state=0), {"depth": [1, 2]}, cv=3).fit(X, y)
    assert gs.best_params_["depth"] in (1, 2)
    fitted = HMERegressor(depth=1, random_state=0).fit(X, y)
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict(X), fitted.predict(X))


def test_warm_start_continues(rng):
    spec, truth, X, y = _toy_hme(300, rng)
    est = HMERegressor(depth=1, random_state=0, max_iter=5, tol=0.0, warm_start=True)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        est.fit(X, y)
    first = est.lower_bound_
    with pytest.warns(ConvergenceWarning):
        est.fit(X, y)
    assert est.lower_bounds_[0] == pytest.approx(first, rel=1e-10)
    assert est.lower_bound_ >= first


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda X, y: (np.where(X > 1.5, np.nan, X), y), "NaN"),
        (lambda X, y: (np.where(X > 1.5, np.inf, X), y), "infinity"),
        (lambda X, y: (X[:, :, None], y), "dim 3"),
        (lambda X, y: (X, y[:-1]), "inconsistent numbers of samples"),
        (lambda X, y: (X.astype(str).astype(object) + "a", y), "could not convert|dtype"),
        (lambda X, y: (X[:1], y[:1]), "at least 2 samples|n_samples"),
    ],
    ids=["nan", "inf", "3d", "lengths", "non-numeric", "one-sample"],
)
def test_bad_input_gets_a_clear_error(make, match, rng):
    spec, truth, X, y = _toy_hme(50, rng)
    Xb, yb = make(X, y)
    with pytest.raises((ValueError, TypeError), match=match):
        HMERegressor(depth=1).fit(Xb, yb)


def test_bad_hyperparameters_and_weights(rng):
    spec, truth, X, y = _toy_hme(50, rng)
    for kw, match in [
        (dict(depth=0), "depth"),
        (dict(gate="tanh"), "gate"),
        (dict(var_floor=0.0), "var_floor"),
        (dict(n_init=0), "n_init"),
        (dict(depth=2, branching=(2,)), "branching"),
        (dict(gate_features=["nope"]), "unknown feature name"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            HMERegressor(**kw).fit(X, y)
    with pytest.raises(ValueError, match="(?i)negative"):
        HMERegressor(depth=1).fit(X, y, sample_weight=-np.ones(50))
    with pytest.raises(ValueError, match="non-zero|positive sum"):
        HMERegressor(depth=1).fit(X, y, sample_weight=np.zeros(50))
    with pytest.raises(ValueError, match="only one class"):
        HMEClassifier(depth=1).fit(X, np.zeros(50))


def test_save_load_round_trip_and_corruption(tmp_path, rng):
    import pandas as pd

    spec, truth, X, y = _toy_hme(200, rng)
    df = pd.DataFrame(X, columns=["a", "b"])
    reg = HMERegressor(depth=1, random_state=0, gate_features=["a"]).fit(df, y)
    path = tmp_path / "model.hme"
    reg.save(path)
    back = hme.load(path)
    np.testing.assert_array_equal(back.predict(df), reg.predict(df))
    np.testing.assert_array_equal(back.predict_interval(df)[0], reg.predict_interval(df)[0])
    assert list(back.feature_names_in_) == ["a", "b"] and back.get_params() == reg.get_params()
    clf = HMEClassifier(depth=1, random_state=0, alpha=1e-2).fit(X, np.where(y > 0, "hi", "lo"))
    clf.save(tmp_path / "clf.hme")
    cback = hme.load(tmp_path / "clf.hme")
    np.testing.assert_array_equal(cback.predict_proba(X), clf.predict_proba(X))
    assert list(cback.predict(X[:5])) == list(clf.predict(X[:5]))
    raw = path.read_bytes()
    (tmp_path / "trunc.hme").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable hme model"):
        hme.load(tmp_path / "trunc.hme")
    # flip one byte inside the stored coefficients
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as zin, zipfile.ZipFile(buf, "w") as zout:
        for item in zin.infolist():
            data = bytearray(zin.read(item.filename))
            if item.filename == "expert_coef.npy":
                data[-1] ^= 0xFF
            zout.writestr(item, bytes(data))
    (tmp_path / "tampered.hme").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="checksum"):
        hme.load(tmp_path / "tampered.hme")
    np.savez(tmp_path / "foreign.npz", x=np.ones(3))
    with pytest.raises(ValueError, match="not an hme model"):
        hme.load(tmp_path / "foreign.npz")


@pytest.mark.slow
def test_selector_picks_the_simulated_structure(rng):
    """Data from a depth-1 (2-expert) HME: BIC picks depth 1 and softmax gates and keeps the whole table;
    the BIC column equals each candidate's own bic()."""
    # 1000 rows: the 3-fold training sets (667 rows) pad to the same size bucket and reuse compiled programs
    spec, truth, X, y = _toy_hme(1000, rng)
    sel = hme.HMESelector(depth=(1, 2), gate=("softmax", "laplace"), n_init=2, random_state=0).fit(X, y)
    assert len(sel.results_["params"]) == 4
    assert sel.best_params_["depth"] == 1 and sel.best_params_["gate"] == "softmax"
    best = sel.best_estimator_
    assert sel.results_["bic"][sel.best_index_] == pytest.approx(best.bic(X, y))
    assert "*" in sel.table()
    cv = hme.HMESelector(depth=(1, 2), criterion="cv", cv=3, n_init=2, random_state=0).fit(X, y)
    assert np.all(np.isfinite(cv.results_["cv_log_likelihood"]))
    assert cv.score(X, y) > 0.7


def test_degenerate_fits_are_reported(rng):
    """An expert that interpolates its points sits on var_floor; a leaf whose gate is shut holds no samples."""
    spec, truth, X, y = _toy_hme(300, rng)
    healthy = HMERegressor(depth=1, random_state=0, n_init=2).fit(X, y)  # filterwarnings=error: no warning here
    assert healthy.restart_degenerate_ == ["", ""]
    assert healthy.restart_leaf_counts_.shape == (2, 2)
    np.testing.assert_allclose(healthy.restart_leaf_counts_.sum(axis=1), 300, rtol=1e-9)

    exact = 1.0 + 2.0 * X[:, 0] - X[:, 1]  # noiseless: every residual variance is zero
    with pytest.warns(hme.DegenerateFitWarning, match="collapsed onto var_floor"):
        est = HMERegressor(depth=1, random_state=0).fit(X, exact)
    assert est.restart_collapsed_[est.best_restart_].all()

    # a gate bias of -60 shuts leaf 0: after one EM step its posterior count is far below one sample
    shut = truth._replace(gates=truth.gates._replace(bias=jnp.asarray([[-60.0, 0.0]]), weight=jnp.zeros((1, 2, 2))))
    res = hme.fit_em(spec, X, y, start_params=shut, max_iter=1)
    counts = np.asarray(res.restart_leaf_count)[0]
    assert counts[0] < 1.0 and counts[1] == pytest.approx(300.0, rel=1e-9)


def test_selector_never_returns_a_degenerate_fit_silently(rng):
    """Noise-free data: every expert interpolates its points and sits on var_floor, so every candidate is
    degenerate; the selector returns the best by BIC and says so."""
    X = rng.uniform(size=(60, 1))
    y = 2.0 * X[:, 0] + 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(hme.DegenerateFitWarning, match="every candidate fit is degenerate"):
            # (nearly) no ridge: the default ridge's term in the variance update keeps experts off the floor
            sel = hme.HMESelector(HMERegressor(**ML), depth=(1, 2), n_init=1, random_state=0).fit(X, y)
    assert all(sel.results_["degenerate"])
    assert sel.best_index_ == int(np.argmin(sel.results_["bic"]))


@pytest.mark.slow
def test_selector_prefers_a_healthy_candidate_on_mcycle():
    """On mcycle (issue 12's notebook case) the chosen candidate is healthy whenever a healthy one exists
    (12 candidate trees, two restarts each: slow)."""
    Xm, ym = hme.datasets.load_mcycle()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sel = hme.HMESelector(HMERegressor(gate_alpha=1e-4, alpha=1e-6, shrink_to="zero", max_iter=300),
                              depth=(1, 2, 3), gate=("softmax", "laplace"), n_init=2, random_state=0).fit(Xm, ym)
    healthy = sel.results_["degenerate"] == ""
    assert healthy.any()
    assert healthy[sel.best_index_]
    assert sel.results_["bic"][sel.best_index_] == np.min(sel.results_["bic"][healthy])
