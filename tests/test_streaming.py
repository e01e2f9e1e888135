"""Streamed (out-of-core) and online EM: the moments M-step, agreement with in-memory EM, the data sources, the
estimators' ``chunk_size`` and ``partial_fit``, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import hme
from hme import sources, streaming
from hme.families.gaussian import moments_m_step, weighted_m_step
from hme.fitting import FitOptions
from hme.simulate import random_truth, sample


@pytest.fixture(scope="module")
def data():
    """A depth-2 binary softmax/Gaussian HME on 3 inputs, 6,001 rows (not a multiple of any chunk)."""
    spec = hme.make_spec(3, depth=2)
    rng = np.random.default_rng(0)
    truth = random_truth(spec, rng)
    X, y = sample(spec, truth, 6001, rng)
    return spec, truth, X, y


def _same(a, b):
    for u, v in zip(a, b, strict=True):
        assert (u is None) == (v is None)
        if u is not None:
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-9, atol=1e-11)


def test_moments_m_step_equals_the_row_wise_m_step():
    """From (gram, rhs, yy, mass) alone, the Gaussian M-step equals the one computed from the rows (two outputs,
    full covariances, ridge towards a target; a shared covariance; fixed effects)."""
    rng = np.random.default_rng(1)
    n, p, L, m = 400, 3, 4, 2
    D = np.column_stack([np.ones(n), rng.normal(size=(n, p))])
    y = rng.normal(size=(n, m)) + D[:, 1:2]
    lw = rng.dirichlet(np.ones(L), size=n) * rng.uniform(0.5, 2, size=(n, 1))
    gram = np.einsum("nl,ni,nj->lij", lw, D, D)
    rhs = np.einsum("nl,ni,nk->lik", lw, D, y)
    yy = np.einsum("nl,ni,nj->lij", lw, y, y)
    opts = FitOptions(tol=1e-6, alpha=np.array([0.0, 0.5, 1.0, 2.0]), gate_alpha=1e-4, var_floor=np.full(m, 1e-6),
                      coef_target=rng.normal(size=(p, m)))
    with jax.enable_x64(True):
        for kw in (dict(n_targets=m), dict(n_targets=m, shared_covariance=True, covariance_type="diag")):
            spec = hme.make_spec(p, depth=2, **kw)
            start = hme.zeros_params(spec, np.float64).experts
            a = moments_m_step(spec, start, gram, rhs, yy, lw.sum(0), opts)
            b = weighted_m_step(spec, start, D, y, lw, gram, opts)
            _same(a, b)
        spec = hme.make_spec(p, depth=2, shared_coef=(1,))
        opts1 = opts._replace(var_floor=np.full(1, 1e-6), coef_target=None)
        start = hme.zeros_params(spec, np.float64).experts
        start = start._replace(cov=np.array([1.0, 2.0, 0.5, 3.0])[:, None, None] * np.ones((L, 1, 1)))
        a = moments_m_step(spec, start, gram[:, :, :], rhs[..., :1], yy[:, :1, :1], lw.sum(0), opts1)
        b = weighted_m_step(spec, start, D, y[:, :1], lw, gram, opts1)
        _same(a, b)


def test_streamed_em_is_in_memory_bound_em(data):
    """Chunks of any size give exactly the in-memory EM iteration with ``gate_solver="bound"``, from one start."""
    spec, _, X, y = data
    with jax.enable_x64(True):
        start = jax.device_get(hme.fit_em(spec, X, y, max_iter=2, n_candidates=1, reseed=False).params)
        ref = hme.fit_em(spec, X, y, start_params=start, gate_solver="bound", max_iter=6, tol=0.0)
        for chunk in (512, 6001, 10000):
            res = streaming.fit_em_streaming(spec, X, y, start_params=start, chunk_size=chunk, max_iter=6, tol=0.0)
            np.testing.assert_allclose(res.history, np.asarray(ref.history)[:7], rtol=1e-10)
            np.testing.assert_allclose(res.params.experts.coef, np.asarray(ref.params.experts.coef), atol=1e-9)
            np.testing.assert_allclose(res.params.gates.weight, np.asarray(ref.params.gates.weight), atol=1e-9)
            assert res.log_likelihood == pytest.approx(float(ref.log_likelihood), rel=1e-10)


def test_default_streamed_fit_reaches_the_truth_monotonically(data):
    """From the default start (found on a subsample), the streamed fit ends at or above the true parameters'
    log-likelihood, and its objective never decreases from pass to pass."""
    spec, truth, X, y = data
    with jax.enable_x64(True):
        res = streaming.fit_em_streaming(spec, X, y, chunk_size=1024, init_rows=3000, max_iter=300)
        truth_ll = float(np.sum(np.asarray(hme.log_likelihood(spec, truth, X, y))))
    assert res.converged
    assert res.log_likelihood >= truth_ll - 1e-6 * abs(truth_ll)
    h = res.history
    assert np.all(np.diff(h) >= -1e-10 * np.abs(h[1:])), np.diff(h).min()
    assert res.scan.n_rows == 6001 and len(res.scan.sample[0]) == 3000


def test_sources_give_the_same_fit(data, tmp_path):
    """ndarray, memmap, zarr, dask and Parquet (weights as a column) deliver the same chunks: the same fit."""
    zarr = pytest.importorskip("zarr")
    da = pytest.importorskip("dask.array")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    spec, _, X, y = data
    w = np.random.default_rng(2).uniform(0.5, 2.0, size=len(y))
    mm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float64, shape=X.shape)
    mm[:] = X
    mm.flush()
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    Xz = zarr.create_array(store=str(tmp_path / "X.zarr"), shape=X.shape, chunks=(1000, 3), dtype="f8")
    Xz[:] = X
    table = pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "target": y, "w": w})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=1500)
    parquet = hme.Parquet(str(tmp_path / "d.parquet"), X=["a", "b", "c"], y="target", weight="w")
    assert sources.is_out_of_core(Xm) and sources.is_out_of_core(Xz) and sources.is_out_of_core(parquet)
    assert not sources.is_out_of_core(X)
    with jax.enable_x64(True):
        start = jax.device_get(hme.fit_em(spec, X, y, max_iter=3, n_candidates=1, reseed=False).params)
        fit = lambda *a, **k: streaming.fit_em_streaming(spec, *a, start_params=start, chunk_size=700, max_iter=4,
                                                         tol=0.0, **k)
        ref = fit(X, y, sample_weight=w)
        for args in ((Xm, y), (Xz, y), (da.from_array(X, chunks=(900, 3)), da.from_array(y, chunks=900)),
                     (parquet, None)):
            res = fit(*args) if args[1] is None else fit(*args, sample_weight=w)
            np.testing.assert_allclose(res.history, ref.history, rtol=1e-12)
            np.testing.assert_allclose(res.params.experts.coef, ref.params.experts.coef, rtol=1e-10, atol=1e-12)
        # an unweighted fit differs: the weights were really read
        assert not np.allclose(fit(X, y).history, ref.history)


def test_parquet_chunks_are_cut_to_size(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x = np.arange(1000.0)
    pq.write_table(pa.table({"x": x, "y": 2 * x}), tmp_path / "t.parquet", row_group_size=333)
    src = sources.as_source(hme.Parquet(str(tmp_path / "t.parquet"), X=["x"], y="y"))
    sizes, seen = [], []
    for X, y, w in src.chunks(256, np.float64):
        sizes.append(len(X))
        seen.append(X[:, 0])
        np.testing.assert_array_equal(y[:, 0], 2 * X[:, 0])
        assert np.all(w == 1)
    assert sizes == [256, 256, 256, 232]
    np.testing.assert_array_equal(np.concatenate(seen), x)


def test_bad_input_is_refused_clearly(data, tmp_path):
    spec, _, X, y = data
    Xbad = X.copy()
    Xbad[5000, 1] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or infinity \(rows 4096"):
        streaming.fit_em_streaming(spec, Xbad, y, chunk_size=1024)
    with pytest.raises(ValueError, match="non-negative"):
        streaming.fit_em_streaming(spec, X, y, sample_weight=-np.ones(len(y)), chunk_size=1024)
    with pytest.raises(ValueError, match="Gaussian experts"):
        streaming.fit_em_streaming(hme.make_spec(3, depth=1, expert="student_t"), X, y)
    with pytest.raises(ValueError, match="softmax gates"):
        streaming.fit_em_streaming(hme.make_spec(3, depth=1, gate="laplace"), X, y)
    with pytest.raises(ValueError, match="same inputs"):
        streaming.fit_em_streaming(hme.make_spec(3, depth=1, gate_features=(0,)), X, y)
    with pytest.raises(ValueError, match="features"):
        streaming.fit_em_streaming(hme.make_spec(2, depth=1), X, y)
    with pytest.raises(ValueError, match="chunk_size"):
        streaming.fit_em_streaming(spec, X, y, chunk_size=0)
    with pytest.raises(ValueError, match="y must have shape"):
        streaming.fit_em_streaming(spec, X, y[:-1])
    with pytest.raises(ValueError, match="step_exponent"):
        streaming.OnlineEM(spec, step_exponent=0.5)
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"a": X[:, 0], "t": y}), tmp_path / "d.parquet")
    with pytest.raises(ValueError, match=r"no columns \['b'\]"):
        sources.as_source(hme.Parquet(str(tmp_path / "d.parquet"), X=["a", "b"], y="t"))
    with pytest.raises(ValueError, match="y=None"):
        sources.as_source(hme.Parquet(str(tmp_path / "d.parquet"), X=["a"], y="t"), y)
    with pytest.raises(ValueError, match="only with|fixed tree"):
        hme.HMERegressor(depth=None, chunk_size=100).fit(X, y)
    with pytest.raises(ValueError, match="every input"):
        hme.HMERegressor(depth=1, chunk_size=100, gate_features=[0]).fit(X, y)


def _online_gap(n_rows: int, batch: int, seed: int) -> tuple[float, float]:
    spec = hme.make_spec(4, depth=2)
    rng = np.random.default_rng(seed)
    truth = random_truth(spec, rng)
    X, y = sample(spec, truth, n_rows, rng)
    Xh, yh = sample(spec, truth, 20000, rng)
    with jax.enable_x64(True):
        online = streaming.OnlineEM(spec, random_state=seed)
        for start in range(0, n_rows, batch):
            online.update(X[start:start + batch], y[start:start + batch])
        full = hme.fit_em(spec, X, y, random_state=seed)
        held = lambda p: float(np.mean(np.asarray(hme.log_likelihood(spec, p, Xh, yh))))
        return held(full.params) - held(online.params), held(truth)


def test_online_em_reaches_batch_em():
    """One pass of online EM over 50,000 rows in batches of 5,000 ends within 0.02 nats per sample of batch EM
    on held-out rows (the issue's bound, at a twentieth of its rows)."""
    gap, _ = _online_gap(50_000, 5_000, seed=3)
    assert gap <= 0.02, gap


@pytest.mark.slow
def test_online_em_reaches_batch_em_on_a_million_rows():
    """The issue's experiment: 1e6 rows in batches of 1e4."""
    gap, _ = _online_gap(1_000_000, 10_000, seed=4)
    assert gap <= 0.02, gap


def test_estimator_chunked_fit_and_partial_fit(data, tmp_path):
    """``chunk_size`` streams an in-memory array; ``partial_fit`` runs online EM; both predict like ``fit``, in
    float32 and float64."""
    spec, truth, X, y = data
    for dtype in (np.float64, np.float32):
        Xd, yd = X[:4000].astype(dtype), y[:4000].astype(dtype)
        ref = hme.HMERegressor(depth=2, random_state=0).fit(Xd, yd)
        chunked = hme.HMERegressor(depth=2, random_state=0, chunk_size=1024).fit(Xd, yd)
        assert chunked.params_.experts.coef.dtype == dtype and chunked.predict(Xd).dtype == dtype
        assert chunked.chunk_size_ == 1024 and len(chunked.pass_seconds_) == chunked.n_iter_ + 1
        assert chunked.score(Xd, yd) == pytest.approx(ref.score(Xd, yd), abs=0.01)
        assert np.mean(chunked.log_likelihood(Xd, yd)) >= np.mean(ref.log_likelihood(Xd, yd)) - 0.01
        online = hme.HMERegressor(depth=2, random_state=0)
        for start in range(0, len(yd), 1000):
            online.partial_fit(Xd[start:start + 1000], yd[start:start + 1000])
        assert online.n_batches_ == 4 and online.online_log_likelihoods_.shape == (3,)
        assert online.score(Xd, yd) == pytest.approx(ref.score(Xd, yd), abs=0.02)
        assert np.isnan(online.log_likelihood_) and online.lower_bounds_.shape == (4,)
        assert online.restart_leaf_counts_.sum() == pytest.approx(len(yd), rel=1e-6)
        for model in (chunked, online):  # both save and load like any fit
            model.save(tmp_path / "m.npz")
            np.testing.assert_array_equal(hme.load(tmp_path / "m.npz").predict(Xd), model.predict(Xd))
    with pytest.raises(ValueError, match="features"):
        online.partial_fit(Xd[:, :2], yd)
    online.fit(Xd, yd)  # fit starts over: partial_fit continues from this fit no more
    assert not hasattr(online, "_online")


@pytest.mark.slow
def test_memory_is_bounded_by_the_chunk(tmp_path):
    """A fresh process fits memmaps of 2e5 and 2.2e6 rows × 20 float32 in chunks of 65,536: its anonymous memory
    (peak over the fit) grows by about the same amount for both, within a quarter of the 168 MB of extra data."""
    script = textwrap.dedent(f"""
        import json, sys, threading, time
        sys.path.insert(0, {os.path.join(os.path.dirname(__file__), '..', 'benchmarks')!r})
        import bench_scale
        path, rows = sys.argv[1], int(sys.argv[2])
        bench_scale.write_memmap(path, rows, 0)
        print(json.dumps(bench_scale.in_fresh_process("streamed", path, 65536, 0)))
    """)
    growth = {}
    for rows in (200_000, 2_200_000):
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"m{rows}"), str(rows)],
                             capture_output=True, text=True, check=True)
        growth[rows] = json.loads(out.stdout.strip().splitlines()[-1])["growth"]
    extra = 2_000_000 * 21 * 4
    assert growth[2_200_000] - growth[200_000] <= 0.25 * extra, growth


def test_two_processes_fit_one_model_like_one_process():
    """benchmarks/multihost.py: two processes joined by jax.distributed (gloo), each holding half the rows, end
    where one process with all rows ends (relative log-likelihood < 1e-8, parameters within 1e-6)."""
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "multihost.py")
    out = subprocess.run([sys.executable, path, "--processes", "2", "--rows", "20000", "--chunk", "4096"],
                         capture_output=True, text=True, timeout=600)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
    assert out.returncode == 0 and " agree: " in last, last
