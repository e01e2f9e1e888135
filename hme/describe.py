"""A text rendering of a fitted tree: each gate's split and each node's share of the data."""

from __future__ import annotations

import numpy as np

from .model import gate_path_probs, leaf_means
from .spec import ModelSpec


def describe_tree(spec: ModelSpec, params, X, feature_names=None, max_features: int = 2) -> str:
    """Indented tree. Gates show their strongest inputs (softmax: largest |slope| x input sd; Laplace: key
    coordinates); every node shows the share of the samples' gate path probability that reaches it; leaves
    show the mean of their expert's prediction and its noise sd (Gaussian)."""
    X = np.asarray(X)
    names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(spec.n_features)]
    gnames = names if spec.gate_features is None else [names[i] for i in spec.gate_features]
    pi = np.asarray(gate_path_probs(spec, params, X), np.float64)
    share_leaf = pi.mean(0)
    mu = np.asarray(leaf_means(spec, params, X), np.float64).mean(0)[:, 0]
    t = spec.tree
    node_share = t.gate_leaf @ share_leaf
    w = np.asarray(params.gates.weight, np.float64)
    Xg = X if spec.gate_features is None else X[:, list(spec.gate_features)]
    sd = Xg.std(0) if Xg.shape[1] else np.zeros(0)
    cov = params.experts.cov
    lines = []
    leaf_of_path = {tuple(p): l for l, p in enumerate(t.leaf_paths)}
    gate_of_edge = {int(e): g for g, e in enumerate(t.parent_edge) if e >= 0}

    def gate_text(g):
        if len(gnames) == 0:
            return "constant weights"
        parts = []
        for c in range(1, t.n_children[g]):
            if not spec.gate_families[g].locations:  # slopes: the largest effects per input sd
                eff = w[g, c] * sd
                top = np.argsort(-np.abs(eff))[:max_features]
                parts.append(f"child {c}: " + ", ".join(f"{w[g, c, j]:+.3g}·{gnames[j]}" for j in top))
            else:
                parts.append(
                    f"child {c}: {spec.gate_families[g].weight_label} "
                    + ", ".join(f"{gnames[j]}={w[g, c, j]:.3g}" for j in range(min(len(gnames), max_features)))
                )
        return "; ".join(parts)

    def walk(g, path, indent):
        lines.append(f"{'  ' * indent}gate {g} ({100 * node_share[g]:.1f}% of samples) [{gate_text(g)}]")
        for c in range(t.n_children[g]):
            edge = g * t.max_branching + c
            p = path + ((g, c),)
            if edge in gate_of_edge:
                walk(gate_of_edge[edge], p, indent + 1)
            else:
                l = leaf_of_path[p]
                noise = f", noise sd {np.sqrt(np.asarray(cov)[l, 0, 0]):.3g}" if cov is not None else ""
                lines.append(
                    f"{'  ' * (indent + 1)}leaf {l} ({100 * share_leaf[l]:.1f}%): mean prediction {mu[l]:.3g}{noise}"
                )

    walk(0, (), 0)
    return "\n".join(lines)
