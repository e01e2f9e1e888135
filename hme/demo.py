"""The main job: HMEs of depth 1-4 against a linear model on the bundled kin8nm data."""

from __future__ import annotations

import time

import jax
import numpy as np

from .datasets import load_kin8nm
from .describe import describe_tree
from .em import fit_em
from .model import predict_mean
from .spec import make_spec


def relative_error(y_true, y_pred) -> float:
    """Test MSE / test variance (Jordan & Jacobs' relative error)."""
    return float(np.mean((y_true - y_pred) ** 2) / np.var(y_true))


def run(depths=(1, 2, 3, 4), test_size: float = 0.25, seed: int = 0, max_iter: int = 500, tol: float = 1e-6):
    X, y = load_kin8nm()
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    n_test = int(round(test_size * len(y)))
    te, tr = idx[:n_test], idx[n_test:]
    rows = []

    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import LinearRegression
    from sklearn.tree import DecisionTreeRegressor

    baselines = [
        ("LinearRegression", LinearRegression()),
        ("DecisionTreeRegressor", DecisionTreeRegressor(min_samples_leaf=5, random_state=seed)),
        ("HistGradientBoosting", HistGradientBoostingRegressor(random_state=seed)),
    ]
    for name, model in baselines:
        t0 = time.perf_counter()
        model.fit(X[tr], y[tr])
        rows.append((name, "-", "-", relative_error(y[te], model.predict(X[te])), "", time.perf_counter() - t0))

    for depth in depths:
        spec = make_spec(X.shape[1], depth=depth)
        t0 = time.perf_counter()
        res = fit_em(spec, X[tr], y[tr], random_state=seed, max_iter=max_iter, tol=tol)
        jax.block_until_ready(res.params)
        elapsed = time.perf_counter() - t0
        pred = np.asarray(predict_mean(spec, res.params, X[te]))[:, 0]
        conv = "" if bool(res.converged) else " (max_iter)"
        rows.append(
            (f"HME depth {depth}", spec.tree.n_leaves, int(res.n_iter), relative_error(y[te], pred), conv, elapsed)
        )
        last = (spec, res.params)
    tree_text = describe_tree(last[0], last[1], X[tr], [f"theta{i + 1}" for i in range(X.shape[1])])
    return rows, len(tr), len(te), tree_text


def main(argv=None) -> int:
    print("hme demo: kin8nm (DELVE robot-arm kinematics), 8 inputs, seeded 75/25 split")
    rows, n_tr, n_te, tree_text = run()
    print(f"train {n_tr} / test {n_te} samples; relative error = test MSE / test variance\n")
    print(f"{'model':24s} {'experts':>7s} {'EM iter':>8s} {'rel. error':>10s} {'fit time (s)':>13s}")
    for name, leaves, iters, rel, conv, t in rows:
        print(f"{name:24s} {leaves:>7} {iters:>8} {rel:10.4f} {t:13.2f}{conv}")
    print("\nThe fitted depth-4 tree (gate splits: strongest inputs; shares of the training samples):")
    print(tree_text)
    print("\nFit times include JAX compilation of each new tree shape (a second fit of the same shape reuses it).")
    return 0
