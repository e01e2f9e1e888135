"""The comparison protocol (hme.compare) against independent computations, and the deep-vs-flat benchmark's quick
mode end to end (issue 15)."""

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import KFold, cross_val_predict

from hme import HMERegressor
from hme.compare import classification_scores, paired_interval, regression_scores, repeated_splits, standardise


def test_paired_interval_without_correction_is_the_t_interval():
    """With the overlap term m/n at 0 the corrected interval is the ordinary one-sample t interval (scipy's)."""
    d = np.random.default_rng(0).normal(0.3, 1.0, size=12)
    mean, lo, hi = paired_interval(d, n_train=10**12, n_test=1)
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    np.testing.assert_allclose([mean, lo, hi], [d.mean(), ci.low, ci.high], rtol=1e-9)


def test_paired_interval_widens_by_the_nadeau_bengio_factor():
    d = np.random.default_rng(1).normal(size=10)
    m0, lo0, hi0 = paired_interval(d, n_train=10**12, n_test=1)
    m1, lo1, hi1 = paired_interval(d, n_train=300, n_test=100)
    factor = np.sqrt((1 / 10 + 100 / 300) / (1 / 10))
    np.testing.assert_allclose(hi1 - m1, factor * (hi0 - m0), rtol=1e-9)
    assert np.isinf(paired_interval(d[:1], 3, 1)[2])


def test_repeated_splits_partition_the_rows_and_differ():
    splits = list(repeated_splits(40, 3, test_size=0.25, random_state=5))
    for tr, te in splits:
        assert len(te) == 10 and np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(40))
    assert not np.array_equal(splits[0][1], splits[1][1])
    with pytest.raises(ValueError, match="test_size"):
        next(repeated_splits(40, 1, test_size=1.5))


def test_regression_scores_of_a_point_predictor_use_out_of_fold_variance():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(120, 2))
    y = X @ np.array([1.0, -2.0]) + rng.normal(scale=0.5, size=120)
    Xtr, Xte = standardise(X[:90], X[90:])
    s = regression_scores(LinearRegression(), Xtr, y[:90], Xte, y[90:])
    resid = y[:90] - cross_val_predict(LinearRegression(), Xtr, y[:90], cv=KFold(5, shuffle=True, random_state=0))
    sd = np.sqrt(np.mean(resid**2))
    pred = LinearRegression().fit(Xtr, y[:90]).predict(Xte)
    np.testing.assert_allclose(s["mse"], np.mean((pred - y[90:]) ** 2), rtol=1e-10)
    np.testing.assert_allclose(s["log_lik"], np.mean(stats.norm.logpdf(y[90:], pred, sd)), rtol=1e-10)
    inside = np.abs(y[90:] - pred) <= stats.norm.ppf(0.95) * sd
    assert s["coverage"] == pytest.approx(np.mean(inside))


def test_regression_scores_of_an_hme_use_its_predictive_distribution():
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, size=(300, 1))
    y = np.where(X[:, 0] > 0, 2 * X[:, 0], -X[:, 0]) + rng.normal(scale=0.1, size=300)
    model = HMERegressor(depth=1, random_state=0)
    s = regression_scores(model, X[:200], y[:200], X[200:], y[200:])
    np.testing.assert_allclose(s["log_lik"], np.mean(model.log_likelihood(X[200:], y[200:])), rtol=1e-10)
    lo, hi = model.predict_interval(X[200:], 0.9)
    assert s["coverage"] == pytest.approx(np.mean((y[200:] >= lo) & (y[200:] <= hi)))
    assert 0.8 <= s["coverage"] <= 1.0  # a well-specified fit covers about 90%


def test_classification_scores_match_sklearn_log_loss():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] + rng.normal(size=200) > 0).astype(int) + (X[:, 1] > 1)
    model = LogisticRegression(max_iter=1000)
    s = classification_scores(model, X[:150], y[:150], X[150:], y[150:])
    proba = model.predict_proba(X[150:])
    assert s["log_lik"] == pytest.approx(-log_loss(y[150:], proba, labels=model.classes_), rel=1e-9)
    assert s["accuracy"] == pytest.approx(np.mean(model.predict(X[150:]) == y[150:]))


def _deep_vs_flat():
    """benchmarks/deep_vs_flat.py as a module."""
    path = Path(__file__).parent.parent / "benchmarks" / "deep_vs_flat.py"
    spec = importlib.util.spec_from_file_location("deep_vs_flat", path)
    dvf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dvf)
    return dvf


def test_deep_vs_flat_predictors_of_depth_match_a_direct_computation(rng):
    """The report's per-set features from hand-made rows: nonlinearity 1 - best nonlinear MSE / linear MSE, mixing
    gain = best HME log-density - best baseline's, and the deep - flat t = mean / sqrt((1/k + n_test/n_train) s²)
    (the corrected resampled t of Nadeau & Bengio), computed here directly."""
    dvf = _deep_vs_flat()
    k, n_train, n_test = 6, 84, 28
    err = {"linear": 2.0, "tree": 1.5, "deep 2": 1.2, "flat 4": 1.3}
    base_ll = {"linear": -1.0, "tree": -0.9, "deep 2": -0.5, "flat 4": -0.6}
    kind = {"linear": "baseline", "tree": "baseline", "deep 2": "deep", "flat 4": "flat"}
    noise = {m: rng.normal(0, 0.05, k) for m in err}
    rows = [{"set": "tonedata", "task": "regression", "split": str(j), "model": m, "kind": kind[m],
             "n_leaves": "4" if kind[m] != "baseline" else "", "n_parameters": "", "n_train": str(n_train),
             "n_test": str(n_test), "error": str(err[m] * (1 + noise[m][j])), "log_lik": str(base_ll[m] + noise[m][j]),
             "coverage": "0.9", "seconds": "1"} for m in err for j in range(k)]
    f = dvf.set_features(dvf._table(rows), "tonedata", [2])
    mean_err = {m: np.mean(err[m] * (1 + noise[m])) for m in err}
    mean_ll = {m: np.mean(base_ll[m] + noise[m]) for m in err}
    assert f["nonlinearity"] == pytest.approx(1 - mean_err["tree"] / mean_err["linear"], rel=1e-12)
    assert f["mixing"] == pytest.approx(max(mean_ll["deep 2"], mean_ll["flat 4"]) - mean_ll["tree"], rel=1e-12)
    d = (base_ll["deep 2"] + noise["deep 2"]) - (base_ll["flat 4"] + noise["flat 4"])
    t = d.mean() / np.sqrt((1 / k + n_test / n_train) * d.var(ddof=1))
    assert f["depth_t"] == pytest.approx(t, rel=1e-9)
    assert (f["n"], f["d"], f["grown_leaves"] != f["grown_leaves"]) == (n_train, 1, True)  # no grown tree: NaN
    section = "\n".join(dvf.predictors_section(dvf._table(rows), ["tonedata"], [2]))
    row = f"| tonedata | regre. | {n_train} | 1 | {f['nonlinearity']:.3f} | {f['mixing']:+.3f} | {t:+.2f} | – |"
    assert row in section


def test_deep_vs_flat_quick_mode_writes_every_row_and_the_report(tmp_path):
    """The CI run of benchmarks/deep_vs_flat.py --quick: every set x split x model measured once, finite scores,
    and a report whose paired rows agree with a direct computation from the CSV."""
    dvf = _deep_vs_flat()
    assert dvf.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    with open(tmp_path / "deep_vs_flat_quick.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    q = dvf.QUICK
    models = {r["model"] for r in rows}
    assert {"deep 2", "flat 4", "LL (depth 2)", *q["baselines"]} == models
    assert len(rows) == len(q["sets"]) * q["repeats"] * len(models)
    assert all(np.isfinite(float(r["log_lik"])) and np.isfinite(float(r["error"])) for r in rows)
    # the tree and the flat mixture have the same free-parameter count (binary softmax gates)
    k = {r["model"]: float(r["n_parameters"]) for r in rows if r["set"] == "tonedata"}
    assert k["deep 2"] == k["flat 4"]
    geyser = [r for r in rows if r["set"] == "MASS_geyser"]
    deep = {r["split"]: float(r["log_lik"]) for r in geyser if r["model"] == "deep 2"}
    flat = {r["split"]: float(r["log_lik"]) for r in geyser if r["model"] == "flat 4"}
    d = [deep[s] - flat[s] for s in sorted(deep)]
    mean, lo, hi = paired_interval(d, int(geyser[0]["n_train"]), int(geyser[0]["n_test"]))
    report = (tmp_path / "deep_vs_flat_quick.md").read_text()
    assert f"| MASS_geyser | regre. | {q['repeats']} | 2 |" in report
    assert f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]" in report
