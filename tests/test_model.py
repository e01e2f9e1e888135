"""The core's likelihood and posteriors against the naive oracle, and the tree invariants."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOL, dtypes
from helpers import one_hot, random_params, random_targets
from reference import oracle

import hme

TREES = {
    "depth1-b2": hme.TreeSpec.complete(1, 2),
    "depth1-b3": hme.TreeSpec.complete(1, 3),
    "depth1-b4": hme.TreeSpec.complete(1, 4),
    "depth2-b2": hme.TreeSpec.complete(2, 2),
    "depth2-(3,2)": hme.TreeSpec.complete(2, (3, 2)),
    "depth3-b2": hme.TreeSpec.complete(3, 2),
    "depth3-(2,4,2)": hme.TreeSpec.complete(3, (2, 4, 2)),
    "depth4-b2": hme.TreeSpec.complete(4, 2),
    "irregular-a": hme.TreeSpec.from_nested([(), [2, 3]]),
    "irregular-b": hme.TreeSpec.from_nested([[(), [2, 2]], 3, ()]),
}

FAMILIES = [
    dict(expert="gaussian", n_targets=1),
    dict(expert="gaussian", n_targets=3),
    dict(expert="categorical", n_targets=2),
    dict(expert="categorical", n_targets=4),
    dict(expert="poisson", n_targets=1),
    dict(expert="poisson", n_targets=2),
]


def _check_against_oracle(spec, rng, dtype, n=23):
    X = rng.normal(size=(n, spec.n_features))
    y = random_targets(spec, rng, n)
    params = random_params(spec, rng, dtype)
    ll_ref, leaf_ref, edge_ref = oracle(
        spec, params, X, y if spec.expert != "categorical" else one_hot(y, spec.n_targets)
    )
    Xd = jnp.asarray(X, dtype)
    ll = np.asarray(hme.log_likelihood(spec, params, Xd, y))
    post = hme.posteriors(spec, params, Xd, y)
    assert ll.dtype == dtype
    rtol = TOL[dtype] * (50 if dtype == np.float32 else 1)
    np.testing.assert_allclose(ll, ll_ref, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(np.asarray(post["leaf"]), leaf_ref, atol=rtol)
    np.testing.assert_allclose(np.asarray(post["edge"]), edge_ref, atol=rtol)
    return params, X, y, post


@pytest.mark.parametrize("dtype", dtypes())
@pytest.mark.parametrize("gate", ["softmax", "laplace"])
@pytest.mark.parametrize("tree", list(TREES), ids=list(TREES))
def test_trees_match_oracle(tree, gate, dtype, rng):
    spec = hme.ModelSpec(TREES[tree], n_features=3, gate=gate)
    _check_against_oracle(spec, rng, dtype)


@pytest.mark.parametrize("dtype", dtypes())
@pytest.mark.parametrize("gate", ["softmax", "laplace"])
@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f"{f['expert']}{f['n_targets']}")
def test_families_match_oracle(fam, gate, dtype, rng):
    spec = hme.ModelSpec(hme.TreeSpec.from_nested([2, [(), 2]]), n_features=2, gate=gate, **fam)
    _check_against_oracle(spec, rng, dtype)


@pytest.mark.parametrize(
    "routing",
    [
        dict(gate_features=(0,), expert_features=(1, 2)),
        dict(gate_features=(), expert_features=None),
        dict(gate_features=(2, 0), expert_features=()),
    ],
    ids=["split", "intercept-only-gate", "constant-experts"],
)
@pytest.mark.parametrize("gate", ["softmax", "laplace"])
def test_feature_routing_matches_oracle(routing, gate, rng):
    spec = hme.ModelSpec(hme.TreeSpec.complete(2, 2), n_features=3, gate=gate, **routing)
    _check_against_oracle(spec, rng, dtypes()[-1])


@pytest.mark.parametrize("tree", ["depth3-(2,4,2)", "irregular-b"])
def test_tree_invariants(tree, rng):
    spec = hme.ModelSpec(TREES[tree], n_features=2)
    params, X, y, post = _check_against_oracle(spec, rng, dtypes()[-1])
    path = np.asarray(hme.gate_path_probs(spec, params, X))
    np.testing.assert_allclose(path.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(post["leaf"]).sum(1), 1.0, rtol=1e-6)
    edge = np.asarray(post["edge"])
    node = np.asarray(post["node"])
    np.testing.assert_allclose(node[:, 0], 1.0, rtol=1e-6)  # the root is always reached
    # the mass reaching a gate equals the mass of the edge leading into it
    pe = spec.tree.parent_edge
    np.testing.assert_allclose(node[:, 1:], edge.reshape(len(X), -1)[:, pe[1:]], rtol=1e-6)
    cond = np.asarray(post["conditional"])
    np.testing.assert_allclose(cond.sum(-1), 1.0, rtol=1e-6)


def test_depth_one_tree_is_flat_mixture(rng):
    """A depth-1 HME is the flat mixture Σ_k softmax_k(v_k·x) N(y | a_k·x + b_k, σ_k²), written out directly."""
    spec = hme.make_spec(2, depth=1, branching=3)
    params = random_params(spec, rng)
    X = rng.normal(size=(40, 2))
    y = rng.normal(size=40)
    g, e = params
    logits = np.asarray(g.bias)[0][None] + X @ np.asarray(g.weight)[0].T
    pri = np.exp(logits - logits.max(1, keepdims=True))
    pri /= pri.sum(1, keepdims=True)
    mu = np.asarray(e.intercept)[:, 0][None] + X @ np.asarray(e.coef)[:, :, 0].T
    var = np.asarray(e.cov)[:, 0, 0]
    dens = np.exp(-0.5 * (y[:, None] - mu) ** 2 / var) / np.sqrt(2 * np.pi * var)
    np.testing.assert_allclose(
        np.asarray(hme.log_likelihood(spec, params, X, y)), np.log((pri * dens).sum(1)), rtol=1e-10
    )
    np.testing.assert_allclose(np.asarray(hme.predict_mean(spec, params, X))[:, 0], (pri * mu).sum(1), rtol=1e-10)


def test_predict_proba_sums_to_one(rng):
    spec = hme.ModelSpec(hme.TreeSpec.complete(2, 2), n_features=3, expert="categorical", n_targets=3)
    params = random_params(spec, rng)
    X = rng.normal(size=(10, 3))
    p = np.asarray(hme.predict_proba(spec, params, X))
    assert p.shape == (10, 3) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=0, atol=1e-12)
    assert np.all(p > 0)
    # the log-space mixture equals the probability-space one, Σ_l π_l(x) p_l(c | x)
    np.testing.assert_allclose(p, np.asarray(hme.predict_mean(spec, params, X)), rtol=1e-10)
    np.testing.assert_allclose(np.exp(np.asarray(hme.predict_log_proba(spec, params, X))), p, rtol=1e-10)
