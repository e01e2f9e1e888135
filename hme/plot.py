"""Pictures of fitted HMEs (matplotlib): gates and experts against an input, the predictive distribution, the
tree, the EM traces and a grown tree's path. Every function takes a fitted :class:`hme.HMERegressor` /
:class:`hme.HMEClassifier` and returns the matplotlib Axes it drew on."""

from __future__ import annotations

import numpy as np


def _axes(ax, n=1, figsize=(6, 4)):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax
    fig, axs = plt.subplots(1, n, figsize=figsize)
    return axs


#: An expert's line is drawn solid where its gate path probability is at least this, faint elsewhere.
EXPERT_SHOWN_ABOVE = 0.1


def _column(est, X, feature):
    """(sorted values of the plotted input, its label, X's rows in that order, the order): ``feature`` is a column
    index or, for DataFrames and estimators fitted with feature names, a column name."""
    names = getattr(est, "feature_names_in_", None)
    if hasattr(X, "columns"):
        names = list(X.columns)
    if isinstance(feature, str):
        if names is None or feature not in list(names):
            raise ValueError(f"feature {feature!r} is not a column name; known names: {names}")
        j = list(names).index(feature)
    else:
        j = int(feature)
        n_cols = X.shape[1]
        if not -n_cols <= j < n_cols:
            raise ValueError(f"feature index {j} out of range for {n_cols} columns")
    values = np.asarray(X.iloc[:, j] if hasattr(X, "iloc") else np.asarray(X)[:, j], dtype=float)
    order = np.argsort(values, kind="stable")
    X_sorted = X.iloc[order] if hasattr(X, "iloc") else np.asarray(X)[order]
    label = str(names[j]) if names is not None else f"feature {j}"
    return values[order], label, X_sorted, order


def gates_and_experts(est, X, feature=0, ax=None):
    """Left: gate path probability π_l(x) of every leaf against one input; right: every expert's mean μ_l(x),
    solid where its leaf is reached (π_l ≥ ``EXPERT_SHOWN_ABOVE``) and faint where it only extrapolates.

    ``X``: array or DataFrame; ``feature``: column index or name. Returns (ax_gates, ax_experts)."""
    xs, label, X_sorted, order = _column(est, X, feature)
    ax = _axes(ax, 2, (11, 4))
    ax_g, ax_e = ax
    pi = est.predict_leaf_proba(X_sorted)
    mu = est.predict_expert_mean(X_sorted)
    if mu.ndim == 3:  # classifiers: the probability of the last class
        mu = mu[..., -1]
    for l in range(pi.shape[1]):
        line = ax_g.plot(xs, pi[:, l], label=f"leaf {l}")[0]
        shown = np.where(pi[:, l] >= EXPERT_SHOWN_ABOVE, mu[:, l], np.nan)
        ax_e.plot(xs, mu[:, l], color=line.get_color(), alpha=0.15, lw=1)
        ax_e.plot(xs, shown, color=line.get_color(), lw=2, label=f"leaf {l}")
    reached = mu[pi >= EXPERT_SHOWN_ABOVE]
    if reached.size:
        lo, hi = float(np.min(reached)), float(np.max(reached))
        pad = 0.1 * (hi - lo) or 1.0
        ax_e.set_ylim(lo - pad, hi + pad)
    ax_g.set(xlabel=label, ylabel="gate path probability π_l(x)", ylim=(-0.02, 1.02), title="gates")
    ax_e.set(xlabel=label, ylabel="expert mean", title=f"experts (solid where π_l ≥ {EXPERT_SHOWN_ABOVE:g})")
    ax_g.legend(fontsize="small")
    return ax_g, ax_e


def predictive(est, X, y=None, feature=0, coverage=0.9, ax=None):
    """Predictive mean and central ``coverage`` interval against one input (index or name), with the data."""
    xs, label, X_sorted, order = _column(est, X, feature)
    ax = _axes(ax)
    lo, hi = est.predict_interval(X_sorted, coverage=coverage)
    ax.fill_between(xs, lo, hi, alpha=0.25, label=f"{int(100 * coverage)}% predictive interval")
    ax.plot(xs, est.predict(X_sorted), color="k", label="predictive mean")
    if y is not None:
        ax.scatter(xs, np.asarray(y)[order], s=8, alpha=0.6, label="data")
    ax.set(xlabel=label, ylabel="y")
    ax.legend(fontsize="small")
    return ax


def tree(est, X, ax=None):
    """The tree: each gate with its share of the samples and its strongest split input, each leaf with its share."""
    spec = est.spec_
    t = spec.tree
    ax = _axes(ax, figsize=(max(6, t.n_leaves * 0.9), 1.6 * (t.depth + 1)))
    share_leaf = est.predict_leaf_proba(X).mean(0)
    node_share = t.gate_leaf @ share_leaf
    names = list(getattr(est, "feature_names_in_", [f"x{i}" for i in range(spec.n_features)]))
    gnames = names if spec.gate_features is None else [names[i] for i in spec.gate_features]
    # leaf x positions left to right; a gate sits above the mean of its leaves
    depth_of_gate = {0: 0}
    for g in range(1, t.n_gates):
        depth_of_gate[g] = depth_of_gate[int(t.parent_edge[g]) // t.max_branching] + 1
    leaf_x = np.arange(t.n_leaves, dtype=float)
    gate_x = np.array([leaf_x[t.gate_leaf[g] > 0].mean() for g in range(t.n_gates)])
    depth_leaf = np.array([len(p) for p in t.leaf_paths])
    w = est.params_.gates.weight
    for g in range(t.n_gates):
        y0 = -depth_of_gate[g]
        for c in range(t.n_children[g]):
            e = g * t.max_branching + c
            kids = [k for k in range(t.n_gates) if t.parent_edge[k] == e]
            if kids:
                x1, y1 = gate_x[kids[0]], -depth_of_gate[kids[0]]
            else:
                l = [l for l, p in enumerate(t.leaf_paths) if p[-1] == (g, c)][0]
                x1, y1 = leaf_x[l], -depth_leaf[l]
            ax.plot([gate_x[g], x1], [y0, y1], color="0.6", zorder=0)
        split = ""
        if len(gnames) and t.n_children[g] > 1:
            j = int(np.argmax(np.abs(w[g, 1])))
            split = f"\n{gnames[j]}"
        ax.text(gate_x[g], y0, f"g{g}\n{100 * node_share[g]:.0f}%{split}", ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round", fc="lightsteelblue"))
    for l in range(t.n_leaves):
        ax.text(
            leaf_x[l],
            -depth_leaf[l],
            f"leaf {l}\n{100 * share_leaf[l]:.0f}%",
            ha="center",
            va="center",
            fontsize=8,
            bbox=dict(boxstyle="round", fc="wheat"),
        )
    ax.set(xlim=(-0.8, t.n_leaves - 0.2), ylim=(-t.depth - 0.6, 0.6), title="fitted tree (share of samples)")
    ax.axis("off")
    return ax


def traces(est, ax=None):
    """The penalised mean log-likelihood against EM iteration, one line per restart (the best in black)."""
    ax = _axes(ax)
    for i, h in enumerate(est.restart_lower_bounds_):
        best = i == est.best_restart_
        ax.plot(
            np.arange(len(h)),
            h,
            color="k" if best else None,
            lw=2 if best else 1,
            label=f"restart {i}" + (" (best)" if best else ""),
        )
    ax.set(xlabel="EM iteration", ylabel="mean log-likelihood (penalised)", title="EM traces")
    ax.legend(fontsize="small")
    return ax


def growth_path(est, ax=None):
    """A grown tree's path (``depth=None``): left, the growth criterion of every tree tried against its number of
    leaves (accepted trees joined by a line, rejected ones as crosses); right, the training log-likelihood and,
    with ``grow_criterion="validation"``, the held-out one, of the accepted trees. Returns the two Axes."""
    path = getattr(est, "growth_path_", None)
    if not path:
        raise ValueError("growth_path needs an estimator fitted with depth=None (it has no growth_path_)")
    ax_c, ax_l = _axes(ax, n=2, figsize=(10, 4))
    leaves = np.array([s["n_leaves"] for s in path])
    crit = np.array([s["criterion"] for s in path], dtype=float)
    kept = np.array([bool(s["accepted"]) for s in path])
    ax_c.plot(leaves[kept], crit[kept], "o-", color="k", label="accepted")
    if np.any(~kept):
        ax_c.plot(leaves[~kept], crit[~kept], "x", color="tab:red", ls="none", label="rejected")
    ax_c.set(xlabel="leaves", ylabel=f"criterion ({est.grow_criterion}, lower is better)", title="growth path")
    ax_c.legend(fontsize="small")
    ll = np.array([s["log_likelihood"] for s in path], dtype=float)
    ax_l.plot(leaves[kept], ll[kept], "o-", label="training")
    val = np.array([s["validation_log_likelihood"] for s in path], dtype=float)
    if np.any(np.isfinite(val[kept])):
        ax_l.plot(leaves[kept], val[kept], "s--", label="validation")
    ax_l.set(xlabel="leaves", ylabel="log-likelihood", title="accepted trees")
    ax_l.legend(fontsize="small")
    return ax_c, ax_l
