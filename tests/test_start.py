"""The default start reaches the maximum likelihood (issue 11): emEM screening, weight-exact draws, Laplace keys
kept where their gate's data are.

The yardstick is the log-likelihood of the parameters that generated the data: the MLE is never below it, so a fit
that ends more than 1 nat below it stopped at a worse stationary point."""

import jax
import numpy as np
import pytest

import hme
from hme import em
from hme.families import laplace as gates
from hme.init import content_order, weighted_draw
from hme.simulate import random_truth, sample, total_log_likelihood


def _gap(spec, n, seed, **fit):
    """fit log-likelihood - truth log-likelihood (joint in (x, y) for a Gaussian gate), default start."""
    rng = np.random.default_rng(10_000 + seed)
    truth = random_truth(spec, rng)
    X, y = sample(spec, truth, n, rng)
    res = hme.fit_em(spec, X, y, max_iter=2000, tol=1e-8, random_state=seed, **fit)
    return total_log_likelihood(spec, res.params, X, y) - total_log_likelihood(spec, truth, X, y), res, X


# (gate, depth, n_features): every family, flat and two-level trees, one and several inputs
# (CI runs one setting per family and the two-level softmax tree; the rest are marked slow)
_slow = pytest.mark.slow
SETTINGS = [("softmax", 1, 1), pytest.param("softmax", 2, 1, marks=_slow), ("softmax", 2, 3), ("laplace", 1, 1),
            pytest.param("laplace", 2, 1, marks=_slow), pytest.param("laplace", 2, 3, marks=_slow),
            ("gaussian", 1, 1), pytest.param("gaussian", 1, 3, marks=_slow)]


@pytest.mark.parametrize("gate, depth, d", SETTINGS)
def test_default_start_reaches_the_true_parameters_likelihood(gate, depth, d):
    """n_init=3 (emEM's default screening) ends within 1 nat of the truth's log-likelihood, or above it, in every
    seed (the slow version below runs 20 seeds and larger n)."""
    spec = hme.make_spec(d, depth=depth, gate=gate)
    gaps = [_gap(spec, 2000, seed, n_init=3)[0] for seed in range(4)]
    assert min(gaps) >= -1.0, gaps


@pytest.mark.slow
@pytest.mark.parametrize("n", [2000, 20000])
@pytest.mark.parametrize("gate, depth, d", SETTINGS + [("softmax", 2, 5), ("laplace", 2, 5), ("gaussian", 1, 5)])
def test_default_start_reaches_the_truth_in_95_percent_of_seeds(gate, depth, d, n):
    spec = hme.make_spec(d, depth=depth, gate=gate)
    gaps = np.array([_gap(spec, n, seed, n_init=3)[0] for seed in range(20)])
    assert np.mean(gaps >= -1.0) >= 0.95, np.sort(gaps)[:3]


def test_screening_finds_what_single_random_starts_miss():
    """Without screening (n_candidates=1) some of these seeds end far below the truth; with it none does: the
    test fails if the screening stops doing its job."""
    spec = hme.make_spec(1, depth=2, gate="softmax")
    plain = [_gap(spec, 2000, seed, n_init=1, n_candidates=1)[0] for seed in range(6)]
    screened = [_gap(spec, 2000, seed, n_init=1)[0] for seed in range(6)]
    assert min(plain) < -10.0, plain
    assert min(screened) >= -1.0, screened


def test_laplace_keys_stay_inside_the_data_of_their_gate():
    """Issue 11's setting: x ~ U[0, 1], a flat two-expert Laplace MoE, n = 1e5, default start: every key ends
    inside the data's range (the issue's fit left a key at -0.22, free to run on). Whether the fit also
    reaches the truth is the start's job: 2 of these 3 truths do; seed 1's gate is nearly flat (probabilities
    0.49-0.56) and its screened start has the keys in the wrong order, so EM merges them (docs/core.md,
    "Starting points")."""
    spec = hme.make_spec(1, depth=1, gate="laplace")
    gaps = []
    for seed in range(3):
        gap, res, X = _gap(spec, 100_000, seed, n_init=2)
        keys = np.asarray(res.params.gates.weight)[0, :, 0]
        assert np.all((keys >= X.min() - 1e-9) & (keys <= X.max() + 1e-9)), keys  # one input: no margin
        gaps.append(gap)
    assert gaps[0] >= -1.0 and gaps[2] >= -1.0, gaps


def test_projected_key_step_holds_clipped_keys_and_resolves_the_rest():
    """project_keys against a direct NumPy projected-Newton solve: coordinates pushed out of the box sit on its
    face, the others solve M_FF s_F = g_F - M_FA s_A."""
    rng = np.random.default_rng(3)
    G, B, p = 1, 2, 2
    P = p + 1
    A = rng.normal(size=(B * P, B * P))
    curv = A @ A.T + B * P * np.eye(B * P)
    grad = rng.normal(size=B * P) * 5
    keys = rng.uniform(0.3, 0.7, size=(G, B, p))
    step = np.linalg.solve(curv, grad).reshape(G, B, P)
    lo, hi = np.zeros((G, p)), np.ones((G, p))
    mask = np.ones((G, B), bool)
    out = np.asarray(gates.project_keys(step, keys, (lo, hi), curv[None], grad[None], mask))
    target = keys + step[..., 1:]
    active = np.concatenate([np.zeros((G, B, 1), bool), (target < 0) | (target > 1)], -1).reshape(-1)
    assert active.any()  # the draw pushes some key out
    fixed = np.concatenate([np.zeros((G, B, 1)), np.clip(target, 0, 1) - keys], -1).reshape(-1)
    F = ~active
    s = np.where(active, fixed, 0.0)
    s[F] = np.linalg.solve(curv[np.ix_(F, F)], grad[F] - curv[np.ix_(F, active)] @ fixed[active])
    s = s.reshape(G, B, P)
    s[..., 1:] = np.clip(keys + s[..., 1:], 0, 1) - keys
    np.testing.assert_allclose(out, s, rtol=1e-10, atol=1e-12)


def test_reach_box_bounds_the_rows_that_reach_each_gate():
    """reach_box against a direct NumPy computation on a two-level tree."""
    rng = np.random.default_rng(0)
    node = np.column_stack([np.ones(300), rng.uniform(size=300), rng.uniform(size=300) ** 3])
    for p, margin in ((2, gates.KEY_MARGIN), (1, 0.0)):
        X = rng.normal(size=(300, p))
        lo, hi = gates.reach_box(X, node)
        for g in range(3):
            rows = node[:, g] >= gates.REACH * node[:, g].max()
            a, b = X[rows].min(0), X[rows].max(0)
            np.testing.assert_allclose(lo[g], a - margin * (b - a))
            np.testing.assert_allclose(hi[g], b + margin * (b - a))


def test_weighted_draw_equals_the_draw_from_repeated_rows():
    """A row of integer weight k is drawn like k copies of it: the same keys pick rows of the same content."""
    rng = np.random.default_rng(1)
    F = rng.normal(size=(50, 3))
    w = rng.integers(0, 4, size=50).astype(float)
    R = np.repeat(F, w.astype(int), axis=0)
    key = jax.random.PRNGKey(3)
    order_key, draw_key = jax.random.split(key)
    a = F[np.asarray(weighted_draw(draw_key, content_order(order_key, F), w, (200,)))]
    b = R[np.asarray(weighted_draw(draw_key, content_order(order_key, R), np.ones(len(R)), (200,)))]
    np.testing.assert_array_equal(a, b)
    assert np.all(w[np.asarray(weighted_draw(draw_key, content_order(order_key, F), w, (200,)))] > 0)


def test_integer_weights_equal_repeated_rows_from_the_default_start():
    """The whole default fit (screened start on a weight-proportional subsample, since n > SCREEN_ROWS, then EM)
    is the same for integer weights and for repeated rows."""
    rng = np.random.default_rng(2)
    spec = hme.make_spec(2, depth=2, gate="softmax")
    truth = random_truth(spec, rng)
    X, y = sample(spec, truth, em.SCREEN_ROWS + 1000, rng)
    w = rng.integers(1, 3, size=len(y))
    a = hme.fit_em(spec, X, y, sample_weight=w, n_init=2, max_iter=30, tol=0.0, random_state=4)
    b = hme.fit_em(spec, np.repeat(X, w, axis=0), np.repeat(y, w), n_init=2, max_iter=30, tol=0.0, random_state=4)
    np.testing.assert_allclose(float(a.log_likelihood), float(b.log_likelihood), rtol=1e-8)
    for u, v in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-7)


def test_n_candidates_is_validated():
    spec = hme.make_spec(1, depth=1)
    X = np.linspace(0, 1, 20)[:, None]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_candidates"):
            hme.fit_em(spec, X, X[:, 0], n_candidates=bad)


def _ramp_trap(n, rng):
    """A 1-input, 2-expert Laplace MoE whose keys are close (a weak ramp between 0.54 and 0.62), its data, and a
    start with the true experts but the ramp near the data's edge, a stationary point of EM (found by a default
    fit on 1e5 rows of this model before re-seeding existed)."""
    spec = hme.make_spec(1, depth=1, gate="laplace")
    truth = hme.HMEParams(hme.GateParams(np.array([[0.0, -0.175]]), np.array([[[0.537], [0.616]]])),
                          hme.ExpertParams(np.array([[0.822], [0.971]]), np.array([[[2.883]], [[-1.379]]]),
                                           np.array([0.196, 0.259]).reshape(2, 1, 1) ** 2))
    X, y = sample(spec, truth, n, rng)
    trap = truth._replace(gates=hme.GateParams(np.array([[0.0, -0.136]]), np.array([[[0.868], [0.926]]])))
    return spec, truth, trap, X, y


def test_reseeding_laplace_keys_leaves_a_misplaced_ramp(rng):
    """EM from the trap stays there, more than 1 nat below the truth; with ``reseed=True`` the runs from re-drawn
    keys find the ramp and end at or above the truth's log-likelihood."""
    spec, truth, trap, X, y = _ramp_trap(40_000, rng)
    lt = total_log_likelihood(spec, truth, X, y)
    fit = dict(start_params=trap, max_iter=2000, tol=1e-8, random_state=0)
    stuck = hme.fit_em(spec, X, y, reseed=False, **fit)
    assert total_log_likelihood(spec, stuck.params, X, y) - lt < -1.0
    freed = hme.fit_em(spec, X, y, reseed=True, **fit)
    assert total_log_likelihood(spec, freed.params, X, y) - lt >= 0.0
    keys = np.sort(np.asarray(freed.params.gates.weight).ravel())
    np.testing.assert_allclose(keys, [0.537, 0.616], atol=0.1)
    # the record stays that of one run with the winner in it
    assert float(freed.restart_objective[int(freed.best_restart)]) == float(freed.objective)
    h = np.asarray(freed.history)
    h = h[np.isfinite(h)]
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[1:]))


def _four_intervals(n, rng):
    """A depth-2 softmax tree over four intervals of x (one linear expert each) and n rows drawn from it."""
    spec = hme.make_spec(1, depth=2, gate="softmax")
    s = 20.0
    gates = hme.GateParams(np.array([[0.0, -0.5 * s], [0.0, -0.25 * s], [0.0, -0.75 * s]]),
                           np.array([[[0.0], [s]]] * 3))
    intercept, coef = np.array([[1.0], [-1.0], [2.0], [0.0]]), np.array([[[2.0]], [[3.0]], [[-2.0]], [[1.0]]])
    truth = hme.HMEParams(gates, hme.ExpertParams(intercept, coef, np.full((4, 1, 1), 0.04)))
    return spec, truth, *sample(spec, truth, n, rng)


def test_reseeding_rearranges_experts_on_the_wrong_leaves(rng):
    """A depth-2 softmax tree over four intervals of x; the trap has the true gates and experts, but the experts of
    the second and third interval swapped between the subtrees (siblings that should be cousins). EM from it stays
    far below the truth; the re-seeded runs (leaf posteriors rearranged) reach the truth's log-likelihood."""
    spec, truth, X, y = _four_intervals(20_000, rng)
    intercept, coef = np.asarray(truth.experts.intercept), np.asarray(truth.experts.coef)
    lt = total_log_likelihood(spec, truth, X, y)
    swap = [0, 2, 1, 3]
    trap = truth._replace(experts=hme.ExpertParams(intercept[swap], coef[swap], truth.experts.cov))
    fit = dict(start_params=trap, max_iter=2000, tol=1e-8, random_state=0)
    assert total_log_likelihood(spec, hme.fit_em(spec, X, y, reseed=False, **fit).params, X, y) - lt < -100.0
    freed = hme.fit_em(spec, X, y, reseed=True, **fit)
    assert total_log_likelihood(spec, freed.params, X, y) - lt >= 0.0


def test_reseeding_does_not_extend_a_fit_whose_arrangement_is_right(rng):
    """From the true arrangement with inflated variances, 8 EM iterations stop far from convergence. Re-seeding
    then finds no arrangement better than the fit's own (start 0, the identity, wins the short runs), so it keeps
    the fit as EM left it (same objective and iteration count) instead of running that start on for up to
    ``max_iter`` more iterations (which on digits tripled the time of an unconverged depth-2 classifier)."""
    spec, truth, X, y = _four_intervals(4_000, rng)
    start = truth._replace(experts=truth.experts._replace(cov=np.asarray(truth.experts.cov) * 25.0))
    fit = dict(start_params=start, max_iter=8, tol=0.0, random_state=0)
    plain = hme.fit_em(spec, X, y, reseed=False, **fit)
    assert not bool(plain.converged)
    reseeded = hme.fit_em(spec, X, y, reseed=True, **fit)
    assert int(reseeded.n_iter) == int(plain.n_iter) == 8
    assert float(reseeded.objective) == float(plain.objective)
