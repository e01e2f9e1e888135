"""Fixed-capacity trees (hme.capacity): a tree fitted inside a capacity tree is fitted exactly as its own TreeSpec
is, its default start reaches the truth's likelihood, the cluster placement splits along each gate's principal
axis, and growth compiles its EM programs once instead of once per tree."""

import jax
import numpy as np
import pytest
from conftest import TOL, dtypes

import hme
from hme import capacity
from hme.em import _fit, _reseed_fit
from hme.grow import grow_tree
from hme.model import log_likelihood
from hme.params import ExpertParams, GateParams, HMEParams
from hme.simulate import random_truth, sample
from hme.tree import TreeSpec

IRREGULAR = ((), ((), ((), ())))
STRUCTURES = [((), ()), IRREGULAR, (((), ()), ((), ())), ((((), ()), ()), ((), ()))]


@pytest.mark.parametrize("structure", STRUCTURES)
def test_layout_is_the_tree_padded(structure):
    tree = TreeSpec(structure)
    K = 7
    lay = capacity.layout(structure, K)
    G, L = tree.n_gates, tree.n_leaves
    np.testing.assert_array_equal(lay.edge_leaf[: 2 * G, :L], tree.edge_leaf)
    assert not lay.edge_leaf[2 * G :].any() and not lay.edge_leaf[:, L:].any()
    np.testing.assert_array_equal(lay.gate_leaf[:G, :L], tree.gate_leaf)
    assert lay.leaf_on.sum() == L and lay.leaf_on[:L].all() and lay.gate_on.sum() == G and lay.gate_on[:G].all()
    np.testing.assert_array_equal(lay.parent_edge[:G], tree.parent_edge)


def test_layout_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="more than the capacity"):
        capacity.layout((((), ()), ((), ())), 3)
    with pytest.raises(ValueError, match="binary"):
        capacity.layout(((), (), ()), 5)
    with pytest.raises(ValueError, match="max_leaves"):
        capacity.CapacityTree(1)


def _padded_start(cspec, params, rng):
    """``params`` in the capacity's first rows, random values in the absent rows (which must not matter)."""
    full = capacity.embed(cspec, params)
    G, L = np.shape(params.gates.bias)[0], np.shape(params.experts.coef)[0]
    noisy = lambda a, n: None if a is None else np.concatenate([np.asarray(a)[:n], np.asarray(a)[n:] +
                                                                rng.normal(size=np.shape(a)[1:])])
    gates = GateParams(*(noisy(a, G) if a is not None else None for a in full.gates))
    experts = ExpertParams(*(noisy(a, L) if a is not None and k != 2 else a for k, a in enumerate(full.experts)))
    return HMEParams(gates, experts)


@pytest.mark.parametrize("gate", ["softmax", "laplace"])
@pytest.mark.parametrize("dtype", dtypes())
def test_capacity_fit_is_the_tree_fit(gate, dtype):
    """EM from one start: the tree's own fit and the fit in a capacity tree of 6 leaves (absent gates and experts
    started at random values) give the same parameters, likelihood, objective and leaf records."""
    rng = np.random.default_rng(3)
    spec = hme.ModelSpec(tree=TreeSpec(IRREGULAR), n_features=2, gate=gate)
    truth = random_truth(spec, rng)
    X, y = sample(spec, truth, 1500, rng)
    X, y = X.astype(dtype), y.astype(dtype)
    opts = dict(max_iter=40, tol=0.0, coef_target=np.full((2, 1), 0.3))
    own = hme.fit_em(spec, X, y, start_params=truth, **opts)
    cspec = capacity.capacity_spec(spec, 6)
    boxed = hme.fit_em(cspec, X, y, start_params=_padded_start(cspec, truth, rng),
                       layout=capacity.layout(IRREGULAR, 6), **opts)
    assert np.shape(boxed.params.experts.coef)[0] == 6
    res = capacity.tree_result(boxed, IRREGULAR)
    tol = TOL[dtype]
    for a, b in zip(jax.tree_util.tree_leaves(own.params), jax.tree_util.tree_leaves(res.params), strict=True):
        np.testing.assert_allclose(b, a, rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(float(res.log_likelihood), float(own.log_likelihood), rtol=tol)
    np.testing.assert_allclose(float(res.objective), float(own.objective), rtol=tol)
    np.testing.assert_allclose(res.restart_leaf_count, own.restart_leaf_count, rtol=tol * 10)


@pytest.mark.parametrize("gate", ["softmax", "laplace"])
def test_capacity_default_start_reaches_the_truth(gate):
    rng = np.random.default_rng(5)
    spec = hme.ModelSpec(tree=TreeSpec(IRREGULAR), n_features=2, gate=gate)
    truth = random_truth(spec, rng)
    X, y = sample(spec, truth, 3000, rng)
    cspec = capacity.capacity_spec(spec, 8)
    res = hme.fit_em(cspec, X, y, layout=capacity.layout(IRREGULAR, 8), n_init=2)
    own = capacity.tree_result(res, IRREGULAR)
    ll_truth = float(np.sum(log_likelihood(spec, truth, X, y)))
    ll = float(np.sum(log_likelihood(spec, own.params, X, y)))
    np.testing.assert_allclose(ll, float(res.log_likelihood), rtol=TOL[np.dtype(jax.dtypes.canonicalize_dtype(
        np.float64)).type])
    assert ll >= ll_truth - 1.0
    assert np.all(np.isinf(np.asarray(res.restart_leaf_count)[:, 4:]))  # absent leaves are never "empty"


@pytest.mark.parametrize("structure", STRUCTURES)
def test_placement_splits_each_gate_along_its_principal_axis(structure):
    """Every leaf gets one cluster, and at every gate the clusters of child 0 and child 1 lie on either side of a
    cut along the leading principal axis of the gate's clusters, in numbers equal to the leaves below each."""
    rng = np.random.default_rng(1)
    K = 7
    tree = TreeSpec(structure)
    L = tree.n_leaves
    lay = capacity.layout(structure, K)
    C = rng.normal(size=(K, 3))
    perm = np.asarray(capacity.place_clusters(jax.tree_util.tree_map(np.asarray, lay), C))
    assert sorted(perm[:L]) == list(range(L)) and list(perm[L:]) == list(range(L, K))
    for g in range(tree.n_gates):
        sides = [perm[:L][tree.edge_leaf[2 * g + c] > 0] for c in range(2)]
        both = np.concatenate(sides)
        sub = C[both] - C[both].mean(0)
        axis = np.linalg.eigh(sub.T @ sub)[1][:, -1]
        proj = [C[s] @ axis for s in sides]
        assert max(proj[0]) < min(proj[1]) or max(proj[1]) < min(proj[0])


def test_capacity_tree_needs_its_layout():
    spec = hme.ModelSpec(tree=capacity.CapacityTree(4), n_features=1)
    X = np.linspace(-1, 1, 50)[:, None]
    with pytest.raises(ValueError, match="layout"):
        hme.fit_em(spec, X, X[:, 0])
    with pytest.raises(ValueError, match="layout"):
        hme.fit_em(hme.make_spec(1), X, X[:, 0], layout=capacity.layout(((), ()), 4))
    with pytest.raises(RuntimeError, match="bind"):
        _ = spec.tree.edge_leaf
    with pytest.raises(ValueError, match="per-level"):
        hme.ModelSpec(tree=capacity.CapacityTree(4), n_features=1, gate=("softmax", "laplace"))


def test_growth_compiles_its_programs_once():
    """Growth tries four or more trees of different shapes; with fixed capacity they share at most four EM
    programs (the single expert's fit, the trees tried, the chosen tree's fit beside the default starts, its
    re-seeding), where tree by tree every shape tried compiles its own."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-3, 3, size=(1500, 1))
    y = np.where(x[:, 0] < -1, -2.0, np.where(x[:, 0] < 1, 1.5 * x[:, 0], 3.0 - x[:, 0])) + 0.2 * rng.normal(size=1500)
    before = _fit._cache_size() + _reseed_fit._cache_size()
    grown = grow_tree(hme.make_spec(1), x, y, max_leaf_nodes=5)
    shapes = {step.structure for step in grown.path}
    assert len(shapes) >= 4
    assert _fit._cache_size() + _reseed_fit._cache_size() - before <= 4
    assert len(grown.spec.tree.leaf_paths) >= 3
