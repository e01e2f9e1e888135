"""The pictures draw what the model says."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

import hme  # noqa: E402
from hme import plot  # noqa: E402
from conftest import load_csv  # noqa: E402


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
