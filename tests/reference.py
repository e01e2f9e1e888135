"""A naive float64 NumPy oracle of the HME likelihood and posteriors.

Deliberately independent of the library: its own tree numbering (breadth-first gates, left-to-right leaves),
recursion over nodes, a Python loop over samples, and textbook densities from SciPy.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, logsumexp


def number_tree(structure):
    """Breadth-first gate numbers keyed by each gate's path of child slots from the root (not by object
    identity: equal sub-tuples may be one shared object)."""
    gate_of = {}
    queue = [((), structure)]
    while queue:
        path, node = queue.pop(0)
        if node == ():
            continue
        gate_of[path] = len(gate_of)
        queue.extend((path + (c,), child) for c, child in enumerate(node))
    return gate_of


def gate_probs(gate, p_gate, bias, weight, x_gate, eps):
    """Probabilities of the children of one gate at one sample."""
    scores = []
    for c in range(p_gate):
        if gate == "softmax":
            scores.append(bias[c] + float(np.dot(weight[c], x_gate)))
        else:
            dist = np.sqrt(np.sum((weight[c] - x_gate) ** 2) + eps**2)
            scores.append(bias[c] - dist)
    scores = np.array(scores)
    return np.exp(scores - logsumexp(scores))


def leaf_density(spec, experts, l, x_exp, yt):
    eta = experts.intercept[l] + x_exp @ experts.coef[l]  # (k,)
    if spec.expert == "gaussian":
        cov = experts.cov[l]
        diff = yt - eta
        maha = diff @ np.linalg.inv(cov) @ diff
        return float(np.exp(-0.5 * maha) / np.sqrt((2 * np.pi) ** len(yt) * np.linalg.det(cov)))
    if spec.expert == "categorical":
        logits = np.concatenate([[0.0], eta])
        p = np.exp(logits - logsumexp(logits))
        return float(np.prod(p ** yt))
    return float(np.exp(np.sum(yt * eta - np.exp(eta) - gammaln(yt + 1))))


def oracle(spec, params, X, Y):
    """Per-sample log-likelihood (n,), leaf posteriors (n, L) and edge posteriors (n, G, B)."""
    g = params.gates
    e = params.experts
    g = type(g)(*(np.asarray(a, np.float64) for a in g))
    e = type(e)(*(None if a is None else np.asarray(a, np.float64) for a in e))
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    gate_of = number_tree(spec.tree.structure)
    G, B = len(gate_of), spec.tree.max_branching
    gidx = list(range(X.shape[1])) if spec.gate_features is None else list(spec.gate_features)
    eidx = list(range(X.shape[1])) if spec.expert_features is None else list(spec.expert_features)
    n = X.shape[0]
    loglik = np.zeros(n)
    leaf_post, edge_post = [], []
    for t in range(n):
        x_g, x_e, yt = X[t, gidx], X[t, eidx], Y[t]
        leaves = []  # (prior, likelihood) per leaf in left-to-right order
        edges = {}

        def up(node, path, prior, x_g=x_g, x_e=x_e, yt=yt, leaves=leaves, edges=edges):
            """Returns the likelihood of the subtree; records priors of leaves and of edges."""
            gid = gate_of[path]
            probs = gate_probs(spec.gate, len(node), g.bias[gid], g.weight[gid], x_g, spec.laplace_smoothing)
            total = 0.0
            for c, child in enumerate(node):
                child_prior = prior * probs[c]
                if child == ():
                    lik = leaf_density(spec, e, len(leaves), x_e, yt)
                    leaves.append((child_prior, lik))
                else:
                    lik = up(child, path + (c,), child_prior)
                edges[(gid, c)] = (child_prior, lik)
                total += probs[c] * lik
            return total

        root_lik = up(spec.tree.structure, (), 1.0)
        loglik[t] = np.log(root_lik)
        leaf_post.append([p * lik / root_lik for p, lik in leaves])
        ep = np.zeros((G, B))
        for (gid, c), (p, lik) in edges.items():
            ep[gid, c] = p * lik / root_lik
        edge_post.append(ep)
    return loglik, np.array(leaf_post), np.array(edge_post)
