r"""EM on data read in chunks: exact EM out of core (:func:`fit_em_streaming`) and online EM (:class:`OnlineEM`).

Both rest on :mod:`hme.moments`: what an EM iteration needs from the data are sums over rows (the experts'
weighted moments and the gates' bound-surrogate terms), so chunks can be summed one at a time.

* **Exact EM out of core.** One pass per iteration: every chunk goes through the same compiled program (the last
  one padded with zero-weight rows), the next chunk is read on a background thread while the current one
  computes (:func:`hme.sources.prefetch`), the moments are summed in float64 on the host, and the M-step solves
  from them (the ``gate_solver="bound"`` iteration of :func:`hme.fit_em`, exactly). Memory is bounded by the
  chunk, whatever the number of rows. A first pass (:func:`scan`) checks the data, finds the weighted means and
  co-moments (Chan, Golub & LeVeque's pairwise update) and draws a uniform subsample; the start is
  :func:`hme.fit_em`'s start search run on that subsample with the same small programs
  (:mod:`hme.stream_start`), so a streamed fit compiles little.
* **Online EM** (stepwise EM, Cappé & Moulines 2009; Sato & Ishii 2000): the moments per unit weight are running
  averages ``s ← (1 - γ_t) s + γ_t ŝ_t`` of each batch's ``ŝ_t`` at the current parameters, and the parameters are
  the M-step of ``N s`` (N: the weight seen so far) after every batch. The step size is
  ``γ_t = (t + 1)^{-κ}`` for the t-th batch after the first (κ ∈ (½, 1], default :data:`STEP_EXPONENT`), the
  schedule under which stepwise EM converges; κ = 1 weighs all batches equally. For the gates this is the
  stochastic majorisation–minimisation of Mairal (2013) on Böhning's surrogate. The first batch is fitted by
  :func:`hme.fit_em` (restarts included) and seeds the averages.

Scope: Gaussian experts (any number of outputs, every covariance type, fixed effects) under softmax gates that see
the experts' inputs, any tree. Other families raise a ``ValueError``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import distributed, heap, stream_start
from ._linalg import padded_length
from .em import DEFAULT_N_CANDIDATES
from .fitting import DEFAULT_ALPHA, DEFAULT_GATE_ALPHA, DEFAULT_VAR_FLOOR, FitOptions, prepare_fit
from .init import INIT_METHODS
from .moments import Moments, check_streamable, moments_of, solve_moments
from .params import HMEParams, center_params, check_params
from .sources import DEFAULT_CHUNK_SIZE, ChunkSource, as_source, prefetch
from .spec import ModelSpec

#: streamed fits of at least this many rows report every pass unless ``verbose=0``
PROGRESS_ROWS = 1_000_000
#: κ in the online step size γ_t = (t + 1)^(-κ)
STEP_EXPONENT = 0.6


# -- the first pass -----------------------------------------------------------------------------------------


class Scan(NamedTuple):
    """What one pass over the data finds (float64): the weighted means and co-moments of z = [x, y], ranges, and
    a uniform subsample of rows for the start."""

    n_rows: int
    n_positive: int  # rows of positive weight
    total: float  # Σ w
    mean: np.ndarray  # (p + k,) weighted mean of [x, y]
    comoment: np.ndarray  # (p + k, p + k) Σ w (z - z̄)(z - z̄)ᵀ
    x_min: np.ndarray  # (p,) over rows of positive weight
    x_max: np.ndarray
    sample: tuple  # (X_s, y_s, w_s): the subsample, in the fit's dtype

    @property
    def n_features(self) -> int:
        return self.x_min.shape[0]

    @property
    def x_mean(self) -> np.ndarray:
        return self.mean[: self.n_features]

    @property
    def y_mean(self) -> np.ndarray:
        return self.mean[self.n_features:]

    def variances(self) -> np.ndarray:
        """(p + k,) weighted variances of [x, y]."""
        return np.diagonal(self.comoment) / self.total


#: rows per block of the first pass's float64 arithmetic
SCAN_BLOCK = 8192


def _combine(total, mean, com, t, m, c):
    """Two sets of rows' (Σw, weighted mean, co-moment) merged (Chan, Golub & LeVeque's update)."""
    if not t > 0:
        return total, mean, com
    delta, new_total = m - mean, total + t
    return new_total, mean + delta * (t / new_total), com + c + np.outer(delta, delta) * (total * t / new_total)


def _merge(total, mean, com, X, y, w):
    """(Σw, mean, co-moment) of the rows so far merged with those of the block ``X``, ``y``, ``w``."""
    z = np.concatenate([X, y], axis=1).astype(np.float64)
    wc = w.astype(np.float64)
    tc = wc.sum()
    if not tc > 0:
        return total, mean, com
    mc = wc @ z / tc
    z -= mc
    return _combine(total, mean, com, tc, mc, (z * wc[:, None]).T @ z)


def scan(source: ChunkSource, *, chunk_size: int = DEFAULT_CHUNK_SIZE, dtype=np.float64, sample_rows: int =
         DEFAULT_CHUNK_SIZE, random_state: int = 0) -> Scan:
    """One pass over ``source``: checks every chunk (finite values, non-negative weights), merges the chunks'
    weighted means and co-moments pairwise (Chan, Golub & LeVeque 1979) and keeps ``sample_rows`` rows drawn
    uniformly without replacement. In a process group (:mod:`hme.distributed`) ``source`` holds this process's
    rows: the statistics are merged over the processes and the subsample is drawn from all rows."""
    n, p, k = source.n_rows, source.n_features, source.n_targets
    counts = distributed.allgather(np.asarray(n)).astype(int)  # rows per process
    offset, n_all = int(counts[: jax.process_index()].sum()), int(counts.sum())
    if n < 1:
        raise ValueError("every process needs at least one row")
    rng = np.random.default_rng(random_state)
    pick = np.sort(rng.choice(n_all, size=min(n_all, sample_rows), replace=False))
    pick = pick[(pick >= offset) & (pick < offset + n)] - offset  # the drawn rows this process holds
    total, mean, com = 0.0, np.zeros(p + k), np.zeros((p + k, p + k))
    x_min, x_max = np.full(p, np.inf), np.full(p, -np.inf)
    n_pos, start, parts = 0, 0, []
    for X, y, w in prefetch(source.chunks(chunk_size, dtype)):
        c = X.shape[0]
        for name, a in (("X", X), ("y", y), ("sample_weight", w)):
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name} contains NaN or infinity (rows {start}..{start + c - 1})")
        if np.any(w < 0):
            raise ValueError("sample_weight must be non-negative")
        for b in range(0, c, SCAN_BLOCK):  # float64 copies of a block at a time
            total, mean, com = _merge(total, mean, com, X[b:b + SCAN_BLOCK], y[b:b + SCAN_BLOCK],
                                      w[b:b + SCAN_BLOCK])
        pos = w > 0
        if pos.any():
            n_pos += int(pos.sum())
            x_min = np.minimum(x_min, X[pos].min(0))
            x_max = np.maximum(x_max, X[pos].max(0))
        sel = pick[(pick >= start) & (pick < start + c)] - start
        if sel.size:
            parts.append((X[sel], y[sel], w[sel]))
        start += c
    empty = (np.zeros((0, p), dtype), np.zeros((0, k), dtype), np.zeros(0, dtype))
    sample = tuple(np.concatenate([part[i] for part in parts]) if parts else empty[i] for i in range(3))
    each = distributed.allgather((np.asarray(total), mean, com, x_min, x_max, np.asarray(n_pos)))
    total, mean, com = 0.0, np.zeros(p + k), np.zeros((p + k, p + k))
    for t, m, c in zip(*each[:3], strict=True):  # process by process
        total, mean, com = _combine(total, mean, com, t, m, c)
    if not total > 0:
        raise ValueError("sample_weight must have a positive sum")
    heap.release()
    return Scan(n_all, int(each[5].sum()), float(total), mean, com, each[3].min(0), each[4].max(0),
                distributed.concat_rows(sample))


# -- exact EM out of core -----------------------------------------------------------------------------------


class StreamResult(NamedTuple):
    """A streamed EM fit (on the original inputs).

    params : HMEParams (NumPy) · objective : the final penalised mean log-likelihood · log_likelihood : Σ_t w_t log
    p(y_t | x_t) at ``params`` · history : objective per pass (the start first) · n_iter : M-steps done ·
    converged, failed : as :func:`hme.fit_em` · pass_seconds : wall time of each pass · start_objective : the
    subsample fit's penalised mean log-likelihood on its own rows · leaf_mass : (L,) Σ_t w_t h_tl at ``params`` ·
    scan : the first pass's :class:`Scan` · chunk_size : rows per chunk
    """

    params: HMEParams
    objective: float
    log_likelihood: float
    history: np.ndarray
    n_iter: int
    converged: bool
    failed: bool
    pass_seconds: np.ndarray
    start_objective: float
    leaf_mass: np.ndarray
    scan: Scan
    chunk_size: int


def _options(spec, scan_: Scan, dtype, tol, alpha, gate_alpha, var_floor, coef_target, coef_scale) -> FitOptions:
    """The traced options, validated as :func:`hme.fitting.prepare_fit` does, with the variance floor relative to
    every row's variance of y."""
    Xs, ys, ws = scan_.sample
    opts = prepare_fit(spec, Xs, ys, sample_weight=ws, tol=tol, alpha=alpha, gate_alpha=gate_alpha,
                       var_floor=var_floor, coef_target=coef_target, coef_scale=coef_scale).opts
    relative = np.asarray(DEFAULT_VAR_FLOOR if var_floor is None else var_floor, np.float64)
    var_y = scan_.variances()[scan_.n_features:]
    floor = relative * np.where(var_y > 0, var_y, 1.0)
    return opts._replace(var_floor=jnp.broadcast_to(jnp.asarray(floor, dtype), (spec.n_targets,)))


def _to_centred(spec, params: HMEParams, x_mean, y_mean) -> HMEParams:
    p = center_params(spec, params, x_mean, 1.0)
    return p._replace(experts=p.experts._replace(intercept=p.experts.intercept - y_mean))


def _from_centred(spec, params: HMEParams, x_mean, y_mean) -> HMEParams:
    p = params._replace(experts=params.experts._replace(intercept=params.experts.intercept + y_mean))
    return center_params(spec, p, x_mean, -1.0)


def _pass(spec, params, source: ChunkSource, chunk: int, dtype, x_mean, y_mean, opts) -> tuple[Moments, float]:
    """(Moments of every row at ``params`` (centred coordinates), R(θ)): one pass, chunks padded to ``chunk``
    rows."""
    acc, pen = None, 0.0
    xm, ym = x_mean.astype(dtype), y_mean.astype(dtype)
    for X, y, w in prefetch(source.chunks(chunk, dtype)):
        c = X.shape[0]
        if c < chunk:  # zero-weight padding: one compiled program for every chunk
            X, y, w = (np.pad(a, ((0, chunk - c),) + ((0, 0),) * (a.ndim - 1)) for a in (X, y, w))
            X[c:], y[c:] = xm, ym
        m, _, pen = moments_of(spec, params, X - xm, y - ym, w, opts)
        m = m.on_host()
        acc = m if acc is None else acc + m
    return Moments(*distributed.allsum(tuple(acc))), float(pen)  # all rows of a process group


def subsample_start(spec: ModelSpec, s: Scan, opts: FitOptions, chunk: int, dtype, *, n_init: int,
                    n_candidates: int, random_state: int, max_iter: int, tol: float, init: str = "random"):
    """The start on the scan's subsample (:func:`hme.stream_start.search`), in the fit's centred coordinates:
    (params, their objective on the subsample)."""
    Xs, ys, ws = (np.asarray(a, np.float64) for a in s.sample)
    sub = stream_start.Subsample(Xs - s.x_mean, ys - s.y_mean, ws, chunk, dtype)  # the passes' program
    return stream_start.search(spec, sub, opts, n_init=n_init, n_candidates=n_candidates, seed=random_state,
                               max_iter=max_iter, tol=tol, init=init)


def fit_em_streaming(
    spec: ModelSpec,
    X,
    y=None,
    *,
    sample_weight=None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype=None,
    start_params: HMEParams | None = None,
    init_rows: int | None = None,
    n_init: int = 1,
    n_candidates: int = DEFAULT_N_CANDIDATES,
    init_params: str = "random",
    random_state: int = 0,
    max_iter: int = 200,
    tol: float = 1e-6,
    alpha=DEFAULT_ALPHA,
    gate_alpha=DEFAULT_GATE_ALPHA,
    var_floor=None,
    coef_target=None,
    coef_scale=None,
    scan_result: Scan | None = None,
    verbose: int | None = None,
) -> StreamResult:
    """Exact EM on data read in chunks (module docstring): bounded memory whatever the number of rows.

    Parameters
    ----------
    spec : ModelSpec with Gaussian experts and softmax gates on the experts' inputs
    X, y, sample_weight : NumPy arrays, ``np.memmap``, zarr or dask arrays (``X`` (n, p), ``y`` (n,) or (n, k)),
        or ``X`` a :class:`hme.sources.Parquet` dataset naming its columns (then ``y=None``)
    chunk_size : rows per chunk (memory ∝ chunk_size · (p + k))
    dtype : the fit's float type (default float64 under ``jax_enable_x64``, else float32)
    start_params : parameters to start from (original inputs); default: :func:`subsample_start` on ``init_rows``
        rows drawn uniformly (default: one chunk), with ``n_init`` restarts of ``n_candidates`` screened random
        starts each (``init_params``: "random", "kmeans" or "kmeans_xy" clustering as in :func:`hme.fit_em`)
    max_iter, tol : passes and the relative-change stopping rule of :func:`hme.fit_em`
    alpha, gate_alpha, var_floor, coef_target, coef_scale : the penalties of :func:`hme.fit_em`
    scan_result : a :func:`scan` of the same data to reuse (skips the first pass)
    verbose : print one line per pass (objective, change, seconds) to stderr; None (default): for data of at
        least :data:`PROGRESS_ROWS` rows
    """
    check_streamable(spec)
    init_rows = chunk_size if init_rows is None else init_rows
    for name, v in (("chunk_size", chunk_size), ("max_iter", max_iter), ("n_init", n_init),
                    ("n_candidates", n_candidates), ("init_rows", init_rows)):
        if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if init_params not in INIT_METHODS:
        raise ValueError(f"init_params must be one of {INIT_METHODS}, got {init_params!r}")
    source = as_source(X, y, sample_weight)
    if source.n_features != spec.n_features or source.n_targets != spec.n_targets:
        raise ValueError(f"the data have {source.n_features} features and {source.n_targets} targets; the spec "
                         f"wants {spec.n_features} and {spec.n_targets}")
    dtype = np.dtype(dtype or (np.float64 if jax.config.jax_enable_x64 else np.float32))
    chunk = int(min(chunk_size, padded_length(source.n_rows)))
    s = scan_result or scan(source, chunk_size=chunk, dtype=dtype, sample_rows=init_rows, random_state=random_state)
    if s.n_positive < spec.tree.n_leaves:
        raise ValueError(f"n_samples={s.n_positive} (with positive weight) should be >= the tree's "
                         f"{spec.tree.n_leaves} leaves")
    opts = _options(spec, s, dtype, tol, alpha, gate_alpha, var_floor, coef_target, coef_scale)
    to_dev = lambda a: jnp.asarray(a, dtype)
    if start_params is None:
        params, start_objective = subsample_start(spec, s, opts, chunk, dtype, n_init=int(n_init),
                                                  n_candidates=int(n_candidates), random_state=random_state,
                                                  max_iter=int(max_iter), tol=tol, init=init_params)
        params = distributed.same_everywhere(params)  # every process continues from process 0's start
        heap.release()  # the start compiled the programs: drop compilation's freed memory
    else:
        check_params(spec, start_params)
        params = _to_centred(spec, jax.tree_util.tree_map(to_dev, start_params), to_dev(s.x_mean), to_dev(s.y_mean))
        start_objective = float("nan")

    def passes(p):
        out = _pass(spec, p, source, chunk, dtype, s.x_mean, s.y_mean, opts)
        heap.release()
        return out

    good, history, seconds, last, converged, failed, n_iter = stream_start.iterate_moments(
        spec, params, passes, opts, int(max_iter), tol, s.n_rows >= PROGRESS_ROWS if verbose is None else verbose)
    if last is None:
        raise FloatingPointError("the streamed fit's start has a non-finite log-likelihood")
    final = _from_centred(spec, good, to_dev(s.x_mean), to_dev(s.y_mean))
    return StreamResult(params=jax.tree_util.tree_map(np.asarray, final),
                        objective=float(history[np.isfinite(history)][-1]), log_likelihood=float(last.log_lik),
                        history=history, n_iter=n_iter, converged=bool(converged), failed=failed,
                        pass_seconds=seconds, start_objective=start_objective, leaf_mass=np.asarray(last.mass),
                        scan=s, chunk_size=chunk)


# -- online EM ----------------------------------------------------------------------------------------------


class OnlineEM:
    """Stepwise EM over batches that arrive one at a time (module docstring); :meth:`update` takes a batch.

    The first batch is fitted in memory by :func:`hme.fit_em` (``fit_options``: n_init, n_candidates,
    random_state, max_iter, tol) and fixes the centring of inputs and targets and the variance floor; every
    later batch moves the running moments by ``γ_t = (t + 1)^{-step_exponent}`` and re-solves the parameters.
    ``x_ref``, ``y_ref`` are the first batch's weighted means (the origin of the internal coordinates),
    ``options`` the traced penalties and floors fixed by the first batch;
    ``history`` holds each later batch's mean log-likelihood under the parameters before it (a prequential
    score); ``first_objective`` is the first batch's EM objective.
    """

    def __init__(self, spec: ModelSpec, *, step_exponent: float = STEP_EXPONENT, alpha=DEFAULT_ALPHA,
                 gate_alpha=DEFAULT_GATE_ALPHA, var_floor=None, coef_target=None, coef_scale=None,
                 **fit_options):
        check_streamable(spec)
        if not 0.5 < step_exponent <= 1.0:
            raise ValueError(f"step_exponent must lie in (0.5, 1] (stepwise EM's step sizes), got {step_exponent!r}")
        self.spec, self.step_exponent = spec, float(step_exponent)
        self.penalties = dict(alpha=alpha, gate_alpha=gate_alpha, var_floor=var_floor, coef_target=coef_target,
                              coef_scale=coef_scale)
        self.fit_options = fit_options
        self.n_batches, self.n_seen = 0, 0.0
        self.history: list[float] = []

    @property
    def leaf_mass(self) -> np.ndarray:
        """(L,) the running estimate of each leaf's posterior weight over all rows seen, ``N s_mass``."""
        return np.asarray(self._avg.mass) * self.n_seen

    @property
    def params(self) -> HMEParams:
        """The current parameters on the original inputs (NumPy)."""
        p = _from_centred(self.spec, self._params, jnp.asarray(self.x_ref), jnp.asarray(self.y_ref))
        return jax.tree_util.tree_map(np.asarray, p)

    def update(self, X, y, sample_weight=None) -> OnlineEM:
        """One batch: ``X`` (n, p), ``y`` (n,) or (n, k), optional weights (n,)."""
        if self.n_batches == 0:
            return self._first(X, y, sample_weight)
        spec = self.spec
        Xc, yc, w = self._batch(X, y, sample_weight)
        mom = moments_of(spec, self._params, Xc, yc, w, self.options)[0].on_host()
        total = float(mom.total)
        self.history.append(float(mom.log_lik) / total)
        t = self.n_batches
        gamma = (t + 1.0) ** -self.step_exponent
        self._avg = self._avg.scaled(1.0 - gamma) + mom.scaled(gamma / total)
        self.n_seen += total
        self._params = solve_moments(spec, self._params, self._avg.scaled(self.n_seen).as_dtype(self._dtype),
                                     self.options)
        self.n_batches += 1
        return self

    def _batch(self, X, y, sample_weight):
        """A later batch checked, centred and padded with zero-weight rows to a reused length (any number of
        rows, one included)."""
        X = np.asarray(X)
        n = X.shape[0] if X.ndim == 2 else -1
        if X.ndim != 2 or X.shape[1] != self.spec.n_features:
            raise ValueError(f"X must have shape (n_samples, {self.spec.n_features}), got {X.shape}")
        y = np.asarray(y, self._dtype).reshape(n, -1) if np.size(y) == n * self.spec.n_targets else None
        if y is None or y.shape[1] != self.spec.n_targets:
            raise ValueError(f"y must hold {self.spec.n_targets} target(s) for each of the {n} rows")
        w = np.ones(n, self._dtype) if sample_weight is None else np.asarray(sample_weight, self._dtype)
        if w.shape != (n,):
            raise ValueError(f"sample_weight must have shape ({n},), got {w.shape}")
        for name, a in (("X", X), ("y", y), ("sample_weight", w)):
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name} contains NaN or infinity")
        if np.any(w < 0) or not w.sum() > 0:
            raise ValueError("sample_weight must be non-negative with a positive sum")
        pad = padded_length(n) - n
        Xc = np.pad(X.astype(self._dtype) - self.x_ref.astype(self._dtype), ((0, pad), (0, 0)))
        yc = np.pad(y - self.y_ref.astype(self._dtype), ((0, pad), (0, 0)))
        return Xc, yc, np.pad(w, (0, pad))

    def _first(self, X, y, sample_weight):
        from .em import fit_em

        spec = self.spec
        res = fit_em(spec, X, y, sample_weight=sample_weight, **self.penalties, **self.fit_options)
        self.first_objective = float(res.objective)
        prep = prepare_fit(spec, X, y, sample_weight=sample_weight, **self.penalties)
        w = np.asarray(prep.weight, np.float64)
        self._dtype = prep.X.dtype
        self.x_ref = (w @ np.asarray(prep.X, np.float64)) / w.sum()
        self.y_ref = (w @ np.asarray(prep.y, np.float64)) / w.sum()
        self.options = prep.opts
        xr, yr = jnp.asarray(self.x_ref, self._dtype), jnp.asarray(self.y_ref, self._dtype)
        self._params = _to_centred(spec, res.params, xr, yr)
        mom = moments_of(spec, self._params, *self._batch(X, prep.y[: X.shape[0]], sample_weight),
                         self.options)[0].on_host()
        self._avg = mom.scaled(1.0 / float(mom.total))
        self.n_seen = float(mom.total)
        self.n_batches = 1
        return self
