"""The pictures draw what the model says."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from conftest import load_csv  # noqa: E402

import hme  # noqa: E402
from hme import plot  # noqa: E402


def test_plots_draw_the_model():
    d = load_csv("tonedata.csv")
    X, y = d[["stretchratio"]].to_numpy(), d["tuned"].to_numpy()
    reg = hme.HMERegressor(depth=1, n_init=3, random_state=0).fit(X, y)
    ax_g, ax_e = plot.gates_and_experts(reg, X)
    order = np.argsort(X[:, 0])
    np.testing.assert_allclose(ax_g.lines[0].get_ydata(), reg.predict_leaf_proba(X)[order, 0])
    ax = plot.predictive(reg, X, y)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), reg.predict(X[order]))
    ax = plot.traces(reg)
    assert len(ax.lines) == 3
    np.testing.assert_allclose(ax.lines[reg.best_restart_].get_ydata(), reg.lower_bounds_)
    deep = hme.HMERegressor(depth=2, random_state=0, max_iter=50)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deep.fit(X, y)
    ax = plot.tree(deep, X)
    labels = [t.get_text() for t in ax.texts]
    assert sum(s.startswith("leaf") for s in labels) == 4 and sum(s.startswith("g") for s in labels) == 3
    assert labels[0].startswith("g0\n100%")
    import matplotlib.pyplot as plt

    plt.close("all")


def test_plots_take_column_names_and_dataframes():
    """Issue 12: ``feature="bmi"`` raised IndexError and DataFrames raised feature-name warnings (errors here).
    The experts panel draws each expert solid only where its leaf is reached (π_l ≥ EXPERT_SHOWN_ABOVE)."""
    import matplotlib.pyplot as plt
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True, as_frame=True)
    reg = hme.HMERegressor(depth=1, random_state=0, n_candidates=4).fit(X, y)
    ax_g, ax_e = plot.gates_and_experts(reg, X, feature="bmi")
    order = np.argsort(X["bmi"].to_numpy(), kind="stable")
    assert ax_g.get_xlabel() == "bmi"
    np.testing.assert_allclose(ax_g.lines[0].get_xdata(), X["bmi"].to_numpy()[order])
    pi = reg.predict_leaf_proba(X)[order]
    mu = reg.predict_expert_mean(X)[order]
    solid = [ln for ln in ax_e.lines if ln.get_label() == "leaf 0"][0]
    expect = np.where(pi[:, 0] >= plot.EXPERT_SHOWN_ABOVE, mu[:, 0], np.nan)
    np.testing.assert_allclose(np.asarray(solid.get_ydata(), float), expect)
    ax = plot.predictive(reg, X, y, feature="bmi")
    np.testing.assert_allclose(ax.lines[0].get_ydata(), reg.predict(X.iloc[order]))
    with np.testing.assert_raises_regex(ValueError, "not a column name"):
        plot.predictive(reg, X, y, feature="nope")
    plot.tree(reg, X)
    plt.close("all")


def test_growth_path_and_grown_tree_plots(rng):
    """The growth path's points are the estimator's growth_path_; the tree plot draws the irregular grown tree."""
    import matplotlib.pyplot as plt

    x = rng.uniform(-3, 3, size=(600, 1))
    y = np.where(x[:, 0] < -1, 2.0, np.where(x[:, 0] < 1, -x[:, 0], 3.0 + x[:, 0])) + 0.2 * rng.normal(size=600)
    est = hme.HMERegressor(depth=None, max_leaf_nodes=4, random_state=0).fit(x, y)
    ax_c, ax_l = plot.growth_path(est)
    kept = [s for s in est.growth_path_ if s["accepted"]]
    np.testing.assert_array_equal(ax_c.lines[0].get_xdata(), [s["n_leaves"] for s in kept])
    np.testing.assert_allclose(ax_c.lines[0].get_ydata(), [s["criterion"] for s in kept])
    np.testing.assert_allclose(ax_l.lines[0].get_ydata(), [s["log_likelihood"] for s in kept])
    ax = plot.tree(est, x)
    labels = [t.get_text() for t in ax.texts]
    assert sum(s.startswith("leaf") for s in labels) == est.tree_.n_leaves
    fixed = hme.HMERegressor(depth=1, random_state=0).fit(x, y)
    import pytest

    with pytest.raises(ValueError, match="depth=None"):
        plot.growth_path(fixed)
    plt.close("all")
