"""Plain-JAX batched linear algebra: agreement with LAPACK through NumPy, and no LAPACK custom call in any fit.

Why it matters: jaxlib 0.10.0-0.11.0 can deadlock (jax-ml/jax#36927) or corrupt the heap (jax-ml/jax#39292) when a
compiled program runs batched LAPACK custom calls on the CPU; see :mod:`hme.batched_linalg`.
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOL, X64, dtypes
from helpers import random_params, random_targets

import hme
from hme import batched_linalg as bl
from hme.em import FitConfig, _fit
from hme.fitting import prepare_fit

SIZES = [1, 2, 5, 31, 32, 33, 70]


def _spd(rng, batch, P, dtype, cond=1e3):
    Q, _ = np.linalg.qr(rng.normal(size=(batch, P, P)))
    lam = np.exp(rng.uniform(0, np.log(cond), size=(batch, P)))
    return ((Q * lam[:, None, :]) @ np.swapaxes(Q, 1, 2)).astype(dtype)


@pytest.mark.parametrize("dtype", dtypes(), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("P", SIZES)
def test_cholesky_solve_inverse_logdet_match_numpy(P, dtype, rng):
    A = _spd(rng, 3, P, dtype)
    B = rng.normal(size=(3, P, 2)).astype(dtype)
    A64 = A.astype(np.float64)
    tol = 50 * TOL[dtype]
    factor = jax.jit(bl.cholesky)(A)
    np.testing.assert_allclose(factor.lower, np.linalg.cholesky(A64), atol=tol * np.sqrt(np.abs(A64).max()))
    x = jax.jit(bl.solve_psd)(A, B)
    ref = np.linalg.solve(A64, B.astype(np.float64))
    np.testing.assert_allclose(x, ref, atol=tol * np.abs(ref).max())
    np.testing.assert_allclose(bl.solve_psd(A, B[..., 0]), ref[..., 0], atol=tol * np.abs(ref).max())
    inv = np.linalg.inv(A64)
    np.testing.assert_allclose(bl.inv_psd(A), inv, atol=tol * np.abs(inv).max())
    np.testing.assert_allclose(bl.logdet(factor), np.linalg.slogdet(A64)[1], atol=tol * P)
    Linv = np.asarray(bl.lower_inverse(factor), np.float64)
    np.testing.assert_allclose(
        Linv @ np.asarray(factor.lower, np.float64), np.broadcast_to(np.eye(P), (3, P, P)), atol=tol * 10
    )


def test_semidefinite_and_zero_matrices_give_finite_solutions(rng):
    A = np.zeros((2, 40, 40))
    A[:, :20, :20] = _spd(rng, 2, 20, np.float64)
    x = np.asarray(bl.solve_psd(A, np.ones((2, 40))))
    assert np.all(np.isfinite(x))
    # the identified block is solved exactly
    np.testing.assert_allclose(A[:, :20, :20] @ x[:, :20, None], np.ones((2, 20, 1)), atol=1e-8)
    assert np.all(np.isfinite(np.asarray(bl.solve_psd(np.zeros((1, 3, 3)), np.ones((1, 3))))))


@pytest.mark.parametrize("n", [3, 12, 42])
def test_matrix_abs_matches_eigendecomposition(n, rng):
    S = rng.normal(size=(3, n, n))
    lam, V = np.linalg.eigh(S + np.swapaxes(S, 1, 2))
    lam[:, 0] = 1e-4 * np.abs(lam).max()  # a small eigenvalue must still be resolved
    S = (V * lam[:, None, :]) @ np.swapaxes(V, 1, 2)
    ref = (V * np.abs(lam)[:, None, :]) @ np.swapaxes(V, 1, 2)
    np.testing.assert_allclose(bl.matrix_abs(S), ref, atol=1e-10 * np.abs(ref).max())


# -- the fitting programs contain no LAPACK/cuSOLVER custom call -------------------------------------------

_FORBIDDEN = re.compile(r"(lapack|cusolver|hipsolver|cublas|cusparse)", re.I)


def _custom_calls(text):
    return sorted(set(re.findall(r"custom_call\s*@([\w.]+)", text)))


SPECS = [
    dict(expert="gaussian", n_targets=1, gate="softmax"),
    dict(expert="gaussian", n_targets=3, gate="laplace"),
    dict(expert="gaussian", n_targets=2, gate="gaussian"),
    dict(expert="categorical", n_targets=10, gate="softmax"),
    dict(expert="poisson", n_targets=2, gate="laplace"),
]


@pytest.mark.parametrize("kw", SPECS, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_fit_programs_call_no_lapack(kw, rng):
    tree = hme.TreeSpec.complete(2, 2) if kw["gate"] != "gaussian" else hme.TreeSpec.complete(1, 3)
    spec = hme.ModelSpec(tree, n_features=40, **kw)
    X = rng.normal(size=(64, 40))
    y = random_targets(spec, rng, 64)
    p = prepare_fit(spec, X, y, init_params="kmeans", n_init=2, random_state=0, max_iter=5, tol=1e-6, alpha=1e-6,
                    gate_alpha=1e-4)
    for solver in ("newton", "bound"):  # tracing and lowering only: nothing is compiled
        cfg = FitConfig(max_iter=5, n_init=2, init="kmeans", gate_solver=solver, expert_solver=solver)
        text = _fit.lower(spec, cfg, p.X, p.y, p.weight, p.keys, p.opts, p.start_params).as_text()
        bad = [c for c in _custom_calls(text) if _FORBIDDEN.search(c)]
        assert not bad, f"LAPACK custom calls in the EM program: {bad}"
    params = random_params(spec, rng)
    if kw["gate"] == "gaussian":
        G, B, p_ = params.gates.weight.shape
        params = hme.HMEParams(
            hme.GateParams(params.gates.bias, params.gates.weight, jnp.broadcast_to(jnp.eye(p_), (G, B, p_, p_))),
            params.experts,
        )
    text = jax.jit(hme.log_likelihood.__wrapped__, static_argnums=0).lower(spec, params, X, y).as_text()
    assert not [c for c in _custom_calls(text) if _FORBIDDEN.search(c)]


def test_the_lowering_check_detects_lapack():
    """The check above is not vacuous: jnp.linalg's batched solve lowers to a LAPACK custom call on the CPU."""
    A = np.broadcast_to(np.eye(3), (2, 3, 3))
    text = jax.jit(jax.numpy.linalg.solve).lower(A, np.ones((2, 3, 1))).as_text()
    assert any(_FORBIDDEN.search(c) for c in _custom_calls(text))


def test_two_batched_solves_in_one_program_finish_in_a_subprocess():
    """The upstream reproducer's shape (jax-ml/jax#36927) with hme's solver, under a watchdog, on every core and
    pinned to one core: it must finish (on jaxlib 0.10.x, jnp.linalg.solve hangs here)."""
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "lapack_deadlock.py")
    args = [sys.executable, script, "--only", "hme", "--size", "200", "--reps", "3", "--timeout", "120"]
    if os.path.exists("/usr/bin/taskset"):
        args += ["--cpus", "0"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "finished every case" in out.stdout
    assert not X64 or "max error" in out.stdout


def test_leading_eigenvector_and_covariance_floor_match_numpy(rng):
    S = rng.normal(size=(6, 3))
    A = S @ S.T
    v = np.asarray(bl.leading_eigenvector(A))
    ref = np.linalg.eigh(A)[1][:, -1]
    assert abs(abs(v @ ref) - 1.0) < 1e-8
    # the Gaussian experts' covariance floor: V max(Λ, 1) Vᵀ through |C - I|
    from hme.families.gaussian import _floor_cov

    C = np.array([[2.0, 0.9], [0.9, 0.6]])
    lam, V = np.linalg.eigh(C)
    np.testing.assert_allclose(_floor_cov(C, np.ones(2), "full"), (V * np.maximum(lam, 1.0)) @ V.T, atol=1e-10)
