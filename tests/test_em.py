"""EM: monotonicity, published log-likelihoods, parameter recovery, restarts, reproducibility, compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import X64, dtypes, load_csv
from helpers import random_params
from scipy.optimize import linear_sum_assignment

import hme
from hme.em import _fit

# Monotonicity slack per dtype: the objective is a mean of n terms summed in that precision.
MONO_SLACK = {np.float32: 2e-5, np.float64: 1e-10}

FAMILIES = [
    dict(expert="gaussian", n_targets=1),
    dict(expert="gaussian", n_targets=2),
    dict(expert="gaussian", n_targets=2, covariance_type="diag", shared_covariance=True),
    dict(expert="categorical", n_targets=3),
    dict(expert="poisson", n_targets=1),
]


def _simulate(spec, params, n, rng, x_scale=1.0):
    X = rng.uniform(-1, 1, size=(n, spec.n_features)) * x_scale
    path = np.asarray(hme.gate_path_probs(spec, params, X))
    leaf = np.array([rng.choice(spec.tree.n_leaves, p=p / p.sum()) for p in path])
    eta = np.asarray(params.experts.intercept)[leaf] + np.einsum("np,npk->nk", X, np.asarray(params.experts.coef)[leaf])
    if spec.expert == "gaussian":
        cov = np.asarray(params.experts.cov)[leaf]
        y = eta + np.einsum("nij,nj->ni", np.linalg.cholesky(cov), rng.normal(size=eta.shape))
    elif spec.expert == "categorical":
        logits = np.concatenate([np.zeros((n, 1)), eta], 1)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        y = np.array([rng.choice(p.shape[1], p=pi) for pi in p])
    else:
        y = rng.poisson(np.exp(np.clip(eta, -5, 3))).astype(float)
    return X, y, leaf


@pytest.mark.parametrize("dtype", dtypes(), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("gate", ["softmax", "laplace"])
@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_em_never_decreases_the_objective(fam, gate, dtype, rng):
    spec = hme.ModelSpec(hme.TreeSpec.complete(2, 2), n_features=2, gate=gate, **fam)
    truth = random_params(spec, rng, gate_scale=2.0)
    X, y, _ = _simulate(spec, truth, 600, rng)
    # one random start per run (no emEM screening, no re-seeding after): EM's own steps from far away, all 40
    res = hme.fit_em(spec, X.astype(dtype), y.astype(dtype) if fam["expert"] != "categorical" else y, max_iter=40,
                     tol=0.0, n_init=2, n_candidates=1, reseed=False)
    for h in np.asarray(res.restart_history):
        h = h[np.isfinite(h)]
        assert len(h) == 41
        assert np.all(np.diff(h) >= -MONO_SLACK[dtype] * np.abs(h[1:])), np.diff(h).min()
    assert res.params.experts.coef.dtype == dtype
    assert np.all(np.isfinite(np.asarray(jax.tree_util.tree_leaves(res.params)[0])))


@pytest.mark.parametrize("gate", ["softmax", "laplace"])
def test_depth_two_parameters_are_recovered(gate, rng):
    """Simulate from a known depth-2 HME; EM recovers experts and gate path probabilities up to leaf order."""
    spec = hme.ModelSpec(hme.TreeSpec.complete(2, 2), n_features=2, gate=gate)
    g = hme.GateParams(
        jnp.zeros((3, 2)),
        jnp.asarray([[[0, 0], [6.0, 0]], [[0, 0], [0, 6.0]], [[0, 0], [0, -6.0]]]),
    )
    if gate == "laplace":
        g = hme.GateParams(
            jnp.zeros((3, 2)), jnp.asarray([[[-1.5, 0], [1.5, 0]], [[0, -1.5], [0, 1.5]], [[0, 1.5], [0, -1.5]]])
        )
    ex = hme.ExpertParams(
        jnp.asarray([[1.0], [-1.0], [2.0], [0.0]]),
        jnp.asarray([[[2.0], [0.0]], [[-1.0], [1.0]], [[0.0], [-2.0]], [[1.5], [1.5]]]),
        jnp.asarray([0.1, 0.2, 0.15, 0.1])[:, None, None] ** 2,
    )
    truth = hme.HMEParams(g, ex)
    X, y, _ = _simulate(spec, truth, 5000, rng)
    res = hme.fit_em(spec, X, y, n_init=4, random_state=0, max_iter=2000, tol=1e-7)
    est = res.params.experts
    A = lambda e: np.concatenate([np.asarray(e.intercept), np.asarray(e.coef)[:, :, 0]], 1)
    cost = ((A(est)[:, None] - A(ex)[None]) ** 2).sum(-1)
    row, col = linear_sum_assignment(cost)
    perm = col[np.argsort(row)]  # est leaf i <-> true leaf perm[i]
    np.testing.assert_allclose(A(est), A(ex)[perm], atol=0.05)
    np.testing.assert_allclose(np.sqrt(np.asarray(est.cov)[:, 0, 0]), np.sqrt(np.asarray(ex.cov)[perm, 0, 0]), rtol=0.1)
    Xt = rng.uniform(-1, 1, size=(500, 2))
    p_est = np.asarray(hme.gate_path_probs(spec, res.params, Xt))
    p_true = np.asarray(hme.gate_path_probs(spec, truth, Xt))[:, perm]
    assert np.abs(p_est - p_true).mean() < 0.02
    assert bool(res.converged)


@pytest.mark.skipif(not X64, reason="published values are float64 results")
def test_tonedata_reaches_published_log_likelihood():
    d = load_csv("tonedata.csv")
    spec = hme.make_spec(1, depth=1)
    res = hme.fit_em(
        spec, d[["stretchratio"]].to_numpy(), d["tuned"].to_numpy(), n_init=10, random_state=0, tol=1e-10, max_iter=2000
    )
    # mixtools hmeEM, an independent NumPy EM and (142.838) flexmix: 142.848
    assert abs(float(res.log_likelihood) - 142.848) < 1e-3
    # the depth-1 tree is the flat mixture: the same value from the functional log-likelihood
    ll = hme.log_likelihood(spec, res.params, d[["stretchratio"]].to_numpy(), d["tuned"].to_numpy())
    assert abs(float(ll.sum()) - 142.848) < 1e-3


@pytest.mark.skipif(not X64, reason="published values are float64 results")
def test_co2data_reaches_mixtools_solution():
    """Benaglia et al. (2009) §5: regmixEM(CO2, GNP, lambda=c(1,3)/4, beta=matrix(c(8,-1,1,1),2,2), sigma=c(2,1))."""
    d = load_csv("CO2data.csv")
    spec = hme.make_spec(1, depth=1, gate_features=())
    start = hme.HMEParams(
        hme.GateParams(jnp.asarray([[0.0, np.log(3.0)]]), jnp.zeros((1, 2, 0))),
        hme.ExpertParams(
            jnp.asarray([[8.0], [1.0]]), jnp.asarray([[[-1.0]], [[1.0]]]), jnp.asarray([[[4.0]], [[1.0]]])
        ),
    )
    res = hme.fit_em(
        spec,
        d[["GNP"]].to_numpy(),
        d["CO2"].to_numpy(),
        start_params=start,
        tol=1e-12,
        max_iter=5000,
        alpha=0.0,
        gate_alpha=0.0,
    )
    assert abs(float(res.log_likelihood) - (-66.93977)) < 1e-4
    lam = np.asarray(jax.nn.softmax(res.params.gates.bias[0]))
    np.testing.assert_allclose(lam, [0.754921, 0.245079], atol=1e-4)
    np.testing.assert_allclose(np.sqrt(np.asarray(res.params.experts.cov).ravel()), [2.049315, 0.809389], atol=1e-4)
    beta = np.concatenate([np.asarray(res.params.experts.intercept), np.asarray(res.params.experts.coef)[:, :, 0]], 1)
    np.testing.assert_allclose(beta, [[8.678987, -0.023344], [1.415150, 0.676596]], atol=1e-4)


def test_mcycle_four_experts_stay_bounded():
    """Plain EM drives a variance to 0 here; the floor keeps every variance positive and the fit finite."""
    d = load_csv("mcycle.csv")
    X, y = d[["times"]].to_numpy(), d["accel"].to_numpy()
    spec = hme.make_spec(1, depth=2)
    res = hme.fit_em(spec, X, y, n_init=5, random_state=0, max_iter=1000)
    var = np.asarray(res.params.experts.cov)[:, 0, 0]
    assert np.all(var >= 1e-6 * np.var(y) * (1 - 1e-6))
    assert np.isfinite(float(res.log_likelihood))
    assert np.all(np.isfinite(np.asarray(res.restart_objective)))


def test_vmapped_restarts_equal_sequential_restarts(rng):
    """The restarts under vmap are the restarts run one at a time (re-seeding, which follows the restarts and
    starts from their winner, is off)."""
    spec = hme.make_spec(2, depth=2)
    truth = random_params(spec, rng, gate_scale=2.0)
    X, y, _ = _simulate(spec, truth, 400, rng)
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    fit = dict(max_iter=30, tol=0.0, reseed=False)
    both = hme.fit_em(spec, X, y, n_init=3, random_state=keys, **fit)
    singles = [hme.fit_em(spec, X, y, n_init=1, random_state=keys[i : i + 1], **fit) for i in range(3)]
    objs = np.array([float(s.objective) for s in singles])
    tol = 1e-8 if X64 else 1e-4
    np.testing.assert_allclose(np.asarray(both.restart_objective), objs, rtol=tol)
    assert int(both.best_restart) == int(np.argmax(objs))
    best = singles[int(np.argmax(objs))].params
    for a, b in zip(jax.tree_util.tree_leaves(both.params), jax.tree_util.tree_leaves(best), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_extra_start_is_one_more_restart(rng):
    """``extra_start`` runs restart 0 from the given start and restarts 1… from the default starts, in one program:
    each restart's objective is that of the same run made on its own, and the winner is the best of them."""
    spec = hme.make_spec(2, depth=2)
    X, y, _ = _simulate(spec, random_params(spec, rng, gate_scale=2.0), 400, rng)
    start = random_params(spec, rng)
    fit = dict(max_iter=30, tol=0.0, reseed=False)
    both = hme.fit_em(spec, X, y, n_init=2, random_state=4, extra_start=start, **fit)
    alone = hme.fit_em(spec, X, y, start_params=start, **fit)
    fresh = hme.fit_em(spec, X, y, n_init=2, random_state=4, **fit)
    objs = np.concatenate([[float(alone.objective)], np.asarray(fresh.restart_objective)])
    np.testing.assert_allclose(np.asarray(both.restart_objective), objs, rtol=1e-8 if X64 else 1e-4)
    assert int(both.best_restart) == int(np.argmax(objs))
    with pytest.raises(ValueError, match="not both"):
        hme.fit_em(spec, X, y, start_params=start, extra_start=start)
    # the gradient engine shares the starts
    g = dict(max_iter=20, random_state=4)
    both = hme.fit_gradient(spec, X, y, extra_start=start, **g)
    objs = [float(hme.fit_gradient(spec, X, y, start_params=start, **g).objective),
            float(hme.fit_gradient(spec, X, y, **g).objective)]
    np.testing.assert_allclose(np.asarray(both.restart_objective), objs, rtol=1e-8 if X64 else 1e-4)


def test_fit_is_reproducible_and_seeds_matter(rng):
    spec = hme.make_spec(2, depth=2)
    X, y, _ = _simulate(spec, random_params(spec, rng, gate_scale=2.0), 300, rng)
    a = hme.fit_em(spec, X, y, random_state=5, n_init=2, max_iter=20)
    b = hme.fit_em(spec, X, y, random_state=5, n_init=2, max_iter=20)
    c = hme.fit_em(spec, X, y, random_state=6, n_init=2, max_iter=20)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert not np.allclose(np.asarray(a.restart_history), np.asarray(c.restart_history), equal_nan=True)


@pytest.mark.skipif(not X64, reason="exact comparison in float64")
def test_warm_start_continues_the_same_path(rng):
    """10 iterations, then 10 more from where it stopped, equal 20 iterations (scikit-learn's 1+1 = 2)."""
    spec = hme.make_spec(2, depth=2)
    X, y, _ = _simulate(spec, random_params(spec, rng, gate_scale=2.0), 300, rng)
    start = hme.fit_em(spec, X, y, max_iter=1, tol=0.0).params
    twenty = hme.fit_em(spec, X, y, start_params=start, max_iter=20, tol=0.0)
    ten = hme.fit_em(spec, X, y, start_params=start, max_iter=10, tol=0.0)
    more = hme.fit_em(spec, X, y, start_params=ten.params, max_iter=10, tol=0.0)
    np.testing.assert_allclose(float(more.objective), float(twenty.objective), rtol=1e-10)
    for u, v in zip(jax.tree_util.tree_leaves(more.params), jax.tree_util.tree_leaves(twenty.params), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6, atol=1e-8)


@pytest.mark.skipif(not X64, reason="exact comparison in float64")
def test_integer_weights_equal_duplicated_rows(rng):
    spec = hme.make_spec(2, depth=1)
    X, y, _ = _simulate(spec, random_params(spec, rng, gate_scale=2.0), 200, rng)
    w = rng.integers(0, 3, size=200)
    start = random_params(spec, rng)
    a = hme.fit_em(spec, X, y, sample_weight=w, start_params=start, max_iter=25, tol=0.0)
    b = hme.fit_em(spec, np.repeat(X, w, axis=0), np.repeat(y, w), start_params=start, max_iter=25, tol=0.0)
    np.testing.assert_allclose(float(a.log_likelihood), float(b.log_likelihood), rtol=1e-9)
    for u, v in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6, atol=1e-9)


def test_second_fit_with_same_shapes_does_not_recompile(rng):
    # Start with the worker's compiled programs dropped, so that hme.code_space never has to clear the caches
    # between the two fits (a worker late in the suite is near vm.max_map_count) and the count measures reuse.
    jax.clear_caches()
    spec = hme.make_spec(3, depth=2)
    X, y, _ = _simulate(spec, random_params(spec, rng, gate_scale=2.0), 256, rng)
    hme.fit_em(spec, X, y, max_iter=15, n_init=2)
    size = _fit._cache_size()
    # new data values, seed, tolerance and regularisation: same compiled program
    hme.fit_em(spec, X + 0.1, y * 2, max_iter=15, n_init=2, random_state=9, tol=1e-3, alpha=1e-3, gate_alpha=1e-2)
    assert _fit._cache_size() == size


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_dtype_follows_input(dtype, rng):
    """float32 inputs fit in float32 whether or not x64 is enabled; float64 needs x64 (else float32)."""
    spec = hme.make_spec(2, depth=1)
    X, y, _ = _simulate(spec, random_params(spec, rng, gate_scale=2.0), 200, rng)
    res = hme.fit_em(spec, X.astype(dtype), y.astype(dtype), max_iter=50)
    expected = dtype if (X64 or dtype == np.float32) else np.float32
    assert res.params.experts.coef.dtype == expected
    assert res.history.dtype == expected
    assert np.isfinite(float(res.log_likelihood))
    assert int(res.n_iter) > 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(X=np.full((10, 2), np.nan)), "NaN"),
        (dict(y=np.ones(9)), "samples"),
        (dict(X=np.ones((10, 3))), "shape"),
        (dict(sample_weight=-np.ones(10)), "non-negative"),
        (dict(max_iter=0), "max_iter"),
        (dict(init_params="nope"), "init_params"),
        (dict(n_init=0), "n_init"),
    ],
)
def test_bad_input_is_rejected(kwargs, match, rng):
    spec = hme.make_spec(2, depth=1)
    args = dict(X=rng.normal(size=(10, 2)), y=rng.normal(size=10))
    args.update(kwargs)
    X, y = args.pop("X"), args.pop("y")
    with pytest.raises(ValueError, match=match):
        hme.fit_em(spec, X, y, **args)


def test_import_does_not_flip_x64():
    import subprocess
    import sys

    code = "import jax; before = jax.config.jax_enable_x64; import hme; print(before, jax.config.jax_enable_x64)"
    env = {k: v for k, v in __import__('os').environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    assert out == ["False", "False"]
