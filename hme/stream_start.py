r"""Where a streamed fit starts: the search of :func:`hme.fit_em`'s default start, run on a uniform subsample with
the moments programs of :mod:`hme.moments` only.

Compiling :func:`hme.fit_em`'s programs costs several hundred MB of memory, more than a chunk of data; a
streamed fit has to stay within a bound set by the chunk. The same search is therefore assembled from the two
small programs every pass uses:

1. **random starts** (emEM, Biernacki, Celeux & Govaert 2003): ``n_candidates`` clusterings of the subsample's
   standardised ``[x, y]`` (``init="random"``: L rows drawn uniformly, each unlike the ones before; "kmeans" /
   "kmeans_xy": k-means++ seeds and :data:`LLOYD_ITERS` Lloyd steps, on x or on [x, y]), each turned into
   parameters (:func:`start_from_responsibilities`) and run :data:`hme.em.SCREEN_ITER` EM iterations; the best
   runs to convergence, and the best of ``n_init`` restarts is kept;
2. **leaves rearranged** (trees of several gates; :func:`hme.em.reseeded_starts`): from the fit's posteriors
   with their columns permuted, :data:`hme.em.RESEED_STARTS` starts run :data:`hme.em.RESEED_ITER` iterations,
   the best runs to convergence and replaces the fit when it is better, for up to :data:`hme.em.RESEED_ROUNDS`
   rounds. (EM cannot move an expert to another subtree by local steps.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from . import heap
from .fitting import FitOptions
from .moments import Moments, moments_of, solve_moments
from .params import HMEParams, zeros_params
from .spec import ModelSpec

#: Lloyd iterations of the "kmeans" starts
LLOYD_ITERS = 25
#: bound steps that fit the gates of a start to its (smoothed) responsibilities
GATE_STEPS = 10
#: a rearranged fit replaces the current one when better by more than this, relative
RESEED_MARGIN = 1e-9


def objective(mom: Moments, penalty: float) -> float:
    """The penalised mean log-likelihood ``(Σ w log p - R(θ)) / Σ w`` from the moments at θ and R(θ)."""
    return (float(mom.log_lik) - float(penalty)) / float(mom.total)


def iterate_moments(spec: ModelSpec, params: HMEParams, moments_at: Callable[[HMEParams], tuple[Moments, float]],
                    opts: FitOptions, max_iter: int, tol: float, verbose: int = 0, label: str = "pass"):
    """EM from ``params``: ``moments_at(θ)`` (a pass over the data: the moments and R(θ)), then the M-step from
    the moments, until the relative change of the objective is at most ``tol`` (:func:`hme.fitting.iterate`'s
    rule) or ``max_iter`` M-steps are done. A non-finite objective stops at the last finite parameters.
    Returns (params, history, seconds per pass, the moments at params, converged, failed, M-steps done)."""
    import time

    dtype = params.experts.intercept.dtype
    history, seconds = [], []
    good, last, converged, failed, k, prev = params, None, False, False, 0, -np.inf
    while True:
        t0 = time.perf_counter()
        mom, pen = moments_at(params)
        obj = objective(mom, pen)
        if k < 2:  # the first passes compiled the programs: hand compilation's freed memory back
            heap.release()
        seconds.append(time.perf_counter() - t0)
        history.append(obj)
        if verbose:
            print(f"{label} {k}: objective {obj:.8f} (change {obj - prev:+.3e}) in {seconds[-1]:.2f} s",
                  file=sys.stderr, flush=True)
        if not np.isfinite(obj):
            failed = True
            break
        good, last = params, mom
        converged = k > 0 and abs(obj - prev) <= tol * max(abs(prev), 1.0)
        if converged or k >= max_iter:
            break
        prev = obj
        params = solve_moments(spec, params, mom.as_dtype(dtype), opts)
        k += 1
    return good, np.asarray(history), np.asarray(seconds), last, converged, failed, k - int(failed)


class Subsample:
    """In-memory rows (centred inputs and targets) cut into padded pieces of ``chunk`` rows on the device."""

    def __init__(self, X: np.ndarray, y: np.ndarray, w: np.ndarray, chunk: int, dtype):
        self.n = X.shape[0]
        self.chunk = chunk
        pad = -self.n % chunk
        cut = lambda a: [jnp.asarray(b, dtype) for b in np.split(np.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)),
                                                                   (self.n + pad) // chunk)]
        self.X, self.y, self.w = cut(X), cut(y), cut(w)
        self.pad = pad
        self.features = np.concatenate([X, y], axis=1)
        self.weight = np.asarray(w, np.float64)
        self.dtype = dtype

    def moments(self, spec: ModelSpec, params: HMEParams, opts: FitOptions, resp: np.ndarray | None = None):
        """(Σ of :func:`hme.moments.chunk_moments` over the pieces (posteriors, or ``resp`` (n, L)), R(θ))."""
        pieces = [None] * len(self.X) if resp is None else self._cut(resp)
        out, pen = None, 0.0
        for X, y, w, r in zip(self.X, self.y, self.w, pieces, strict=True):
            m, _, pen = moments_of(spec, params, X, y, w, opts, r)
            m = m.on_host()
            out = m if out is None else out + m
        return out, float(pen)

    def posteriors(self, spec: ModelSpec, params: HMEParams, opts: FitOptions) -> np.ndarray:
        """(n, L) leaf posteriors at ``params``."""
        h = [np.asarray(moments_of(spec, params, X, y, w, opts)[1]) for X, y, w in zip(self.X, self.y, self.w,
                                                                                        strict=True)]
        return np.concatenate(h)[: self.n].astype(np.float64)

    def _cut(self, resp):
        r = np.pad(resp, ((0, self.pad), (0, 0)))
        return [jnp.asarray(b, self.dtype) for b in np.split(r, r.shape[0] // self.chunk)]


def _standardised(F: np.ndarray, w: np.ndarray) -> np.ndarray:
    mu = w @ F / w.sum()
    var = w @ (F - mu) ** 2 / w.sum()
    return (F - mu) / np.sqrt(np.where(var > 0, var, 1.0))


def clustering(F: np.ndarray, w: np.ndarray, k: int, method: str, rng: np.random.Generator) -> np.ndarray:
    """(n, k) hard responsibilities: ``method="random"`` draws k centres among the rows, the first ∝ w, each next
    ∝ w among the rows unlike the centres so far; "kmeans" draws k-means++ seeds (∝ w D²) and takes
    :data:`LLOYD_ITERS` Lloyd steps. Rows go to their nearest centre."""
    d2 = np.full(F.shape[0], np.inf)
    centres = []
    for i in range(k):
        p = w.copy() if i == 0 else w * (d2 if method != "random" else (d2 > 0))
        p = p if p.sum() > 0 else w.copy()
        c = F[rng.choice(F.shape[0], p=p / p.sum())]
        centres.append(c)
        d2 = np.minimum(d2, np.sum((F - c) ** 2, axis=1))
    C = np.array(centres)
    nearest = lambda C: np.argmin(np.sum(C**2, 1)[None] - 2 * F @ C.T, axis=1)  # (n,): |F|² is common to all
    if method != "random":
        for _ in range(LLOYD_ITERS):
            onehot = np.eye(k)[nearest(C)] * w[:, None]
            counts = onehot.sum(0)
            C = np.where(counts[:, None] > 0, onehot.T @ F / np.maximum(counts, 1e-300)[:, None], C)
    return np.eye(k)[nearest(C)]


def start_from_responsibilities(spec: ModelSpec, resp: np.ndarray, sub: Subsample, opts: FitOptions) -> HMEParams:
    """Parameters fitted to responsibilities ``resp`` (n, L), as :func:`hme.init.params_from_responsibilities`
    does: the experts by the M-step with ``resp`` as leaf weights, the gates by :data:`GATE_STEPS` bound steps
    towards ``0.9 resp + 0.1 / L`` from uniform gates."""
    L = spec.tree.n_leaves
    p = zeros_params(spec, sub.dtype)
    experts = solve_moments(spec, p, sub.moments(spec, p, opts, resp)[0].as_dtype(sub.dtype), opts).experts
    heap.release()
    p = HMEParams(p.gates, experts)
    soft = 0.9 * resp + 0.1 / L
    for _ in range(GATE_STEPS):
        p = HMEParams(solve_moments(spec, p, sub.moments(spec, p, opts, soft)[0].as_dtype(sub.dtype), opts).gates,
                      experts)
    return p


def _final(history) -> float:
    h = history[np.isfinite(history)]
    return float(h[-1]) if h.size else -np.inf


def search(spec: ModelSpec, sub: Subsample, opts: FitOptions, *, n_init: int, n_candidates: int, seed: int,
           max_iter: int, tol: float, init: str = "random") -> tuple[HMEParams, float]:
    """The start (module docstring) on ``sub``: (parameters in the subsample's coordinates, their objective)."""
    from .em import RESEED_ITER, RESEED_ROUNDS, RESEED_STARTS, SCREEN_ITER

    rng = np.random.default_rng(seed)
    L = spec.tree.n_leaves
    run = lambda p, iters, t: iterate_moments(spec, p, lambda q: sub.moments(spec, q, opts), opts, iters, t)
    F = _standardised(sub.features if init != "kmeans" else sub.features[:, : spec.n_features], sub.weight)
    best, best_obj = None, -np.inf
    for _ in range(n_init):
        pick, pick_obj = None, -np.inf
        for _ in range(n_candidates):
            p = start_from_responsibilities(spec, clustering(F, sub.weight, L, init, rng), sub, opts)
            obj = _final(run(p, SCREEN_ITER, 0.0)[1]) if n_candidates > 1 else 0.0
            if pick is None or obj > pick_obj:
                pick, pick_obj = p, obj
        p, hist = run(pick, max_iter, tol)[:2]
        if best is None or _final(hist) > best_obj:
            best, best_obj = p, _final(hist)
    if spec.tree.n_gates == 1:
        return best, best_obj
    for _ in range(RESEED_ROUNDS):
        h = sub.posteriors(spec, best, opts)
        perms = [np.arange(L)] + [rng.permutation(L) for _ in range(RESEED_STARTS - 1)]
        trials = [run(start_from_responsibilities(spec, h[:, perm], sub, opts), RESEED_ITER, 0.0)[:2]
                  for perm in perms]
        p, hist = max(trials, key=lambda t: _final(t[1]))
        p, hist = run(p, max_iter, tol)[:2]
        if not _final(hist) > best_obj + RESEED_MARGIN * max(1.0, abs(best_obj)):
            break
        best, best_obj = p, _final(hist)
    return best, best_obj
