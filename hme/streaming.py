r"""EM on data read in chunks: exact EM out of core (:func:`fit_em_streaming`) and online EM (:class:`OnlineEM`).

Both rest on the same fact: what an EM iteration needs from the data are sums over rows. At parameters θ, for
rows t with weights w_t, leaf posteriors h_tl, design rows d_t = [1, x_t] and targets y_t (:class:`Moments`):

.. math::  G_l = Σ_t w_t h_{tl} d_t d_tᵀ, \quad R_l = Σ_t w_t h_{tl} d_t y_tᵀ, \quad
           S_l = Σ_t w_t h_{tl} y_t y_tᵀ, \quad N_l = Σ_t w_t h_{tl},

which give the Gaussian experts' M-step in closed form (:func:`hme.families.gaussian.moments_m_step`), and for
every softmax gate u the linear term of Böhning's quadratic minoriser of its expected log-likelihood,

.. math::  c_u = Σ_t d_t (e_{tu} - n_{tu} p_{tu}(θ)) + (½ (I - 11ᵀ/B_u) ⊗ Σ_l A_{ul} G_l)\, θ_u,

(e: edge posteriors, n: node posteriors, A: the gate–leaf incidence), whose maximiser
``θ_u' = (C_u + P)⁻¹ c_u`` is the ``gate_solver="bound"`` step of :func:`hme.fit_em` (a minorise–maximise step: the
likelihood never decreases). Sums are additive over chunks, so a pass over the data in chunks of any size gives
exactly the in-memory iteration.

* **Exact EM out of core.** One pass per iteration: every chunk goes through the same compiled program (the last
  one padded with zero-weight rows), the next chunk is read on a background thread while the current one
  computes (:func:`hme.sources.prefetch`), the moments are summed in float64 on the host, and the M-step solves
  from them. Memory is bounded by the chunk, whatever the number of rows. A first pass (:func:`scan`) checks the
  data, finds the weighted means and (co)variances (Chan et al.'s pairwise update) and draws a uniform subsample;
  the start is an in-memory :func:`hme.fit_em` on that subsample (restarts and emEM screening included).
* **Online EM** (stepwise EM, Cappé & Moulines 2009; Sato & Ishii 2000): the moments per unit weight are running
  averages ``s ← (1 - γ_t) s + γ_t ŝ_t`` of each batch's ``ŝ_t`` at the current parameters, and the parameters are
  the M-step of ``N s`` (N: the weight seen so far) after every batch. The step size is
  ``γ_t = (t + 1)^{-κ}`` for the t-th batch after the first (κ ∈ (½, 1], default :data:`STEP_EXPONENT`), the
  classical schedule for which stepwise EM converges; κ = 1 weighs all batches equally. For the gates this is the
  stochastic majorisation–minimisation of Mairal (2013) on Böhning's surrogate. The first batch is fitted by
  :func:`hme.fit_em` (restarts included) and seeds the averages.

Scope: Gaussian experts (any number of outputs, every covariance type, fixed effects) under softmax gates that see
the experts' inputs, any tree. Other families raise a ``ValueError``.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._linalg import padded_length, solve_psd, weighted_gram
from ._logit import bound_curvature, free_probs, penalised_curvature
from .families.gaussian import moments_m_step
from .fitting import DEFAULT_ALPHA, DEFAULT_GATE_ALPHA, DEFAULT_VAR_FLOOR, FitOptions, penalty, prepare_fit
from .model import edge_mass, joint, make_design
from .params import GateParams, HMEParams, center_params
from .sources import DEFAULT_CHUNK_SIZE, ChunkSource, as_source, prefetch
from .spec import ModelSpec

#: rows of the uniform subsample the streamed fit starts from (an in-memory EM fit on them)
DEFAULT_INIT_ROWS = 20000
#: κ in the online step size γ_t = (t + 1)^(-κ)
STEP_EXPONENT = 0.6


class Moments(NamedTuple):
    """Weighted sums over rows at fixed parameters (module docstring); float64 NumPy on the host, or arrays of the
    fit's dtype inside the compiled chunk step."""

    total: np.ndarray  # () Σ w
    log_lik: np.ndarray  # () Σ w log p(y | x)
    gram: np.ndarray  # (L, q, q)
    rhs: np.ndarray  # (L, q, m)
    yy: np.ndarray  # (L, m, m)
    mass: np.ndarray  # (L,)
    gate_lin: np.ndarray  # (G, (B-1) q): the gates' surrogate linear terms c_u


def _add(a: Moments, b: Moments) -> Moments:
    return Moments(*(x + np.asarray(y, np.float64) for x, y in zip(a, b, strict=True)))


def _scale(a: Moments, c: float) -> Moments:
    return Moments(*(c * x for x in a))


def check_streamable(spec: ModelSpec) -> None:
    """A ValueError unless streamed and online EM cover ``spec`` (Gaussian experts, softmax gates on the experts'
    inputs)."""
    if spec.expert != "gaussian":
        raise ValueError(f"streamed and online EM fit Gaussian experts; got expert={spec.expert!r}")
    if spec.gate_kinds != ("softmax",) * spec.tree.n_gates:
        raise ValueError("streamed and online EM fit softmax gates; got gates "
                         f"{sorted(set(spec.gate_kinds))}")
    if not spec.shares_design:
        raise ValueError("streamed and online EM need the gates and experts to see the same inputs "
                         "(gate_features == expert_features)")


def _gate_theta(gates: GateParams) -> jax.Array:
    return jnp.concatenate([gates.bias[..., None], gates.weight], axis=-1)  # (G, B, q)


def chunk_moments(spec: ModelSpec, params: HMEParams, X: jax.Array, y: jax.Array, w: jax.Array) -> Moments:
    """The :class:`Moments` of one chunk (rows of zero weight add nothing), in the chunk's dtype."""
    mask = np.asarray(spec.tree.child_mask, bool)
    design = make_design(spec, X)
    j = joint(spec, params, design, y)
    leaf_w = j.leaf_post * w[:, None]
    D = design.expert
    gram = weighted_gram(D, leaf_w)
    rhs = jnp.einsum("nl,nq,nm->lqm", leaf_w, D, y)
    yy = jnp.einsum("nl,ni,nj->lij", leaf_w, y, y)
    edge_w = edge_mass(spec, leaf_w)
    node_w = jnp.sum(edge_w, -1)
    resid = edge_w[:, :, 1:] - node_w[:, :, None] * free_probs(j.gate_log_prob, mask)
    grad = jnp.einsum("nq,nub->ubq", D, resid)
    node_gram = jnp.einsum("gl,lij->gij", jnp.asarray(spec.tree.gate_leaf, D.dtype), gram)
    G, Bf, q = grad.shape
    theta = _gate_theta(params.gates)[:, 1:, :].reshape(G, Bf * q)
    lin = grad.reshape(G, Bf * q) + jnp.einsum("gij,gj->gi", bound_curvature(node_gram, mask), theta)
    lin = jnp.where(np.repeat(mask[:, 1:], q, axis=1), lin, 0.0)
    ll = jnp.sum(jnp.where(w > 0, w * j.log_lik, 0.0))
    return Moments(jnp.sum(w), ll, gram, rhs, yy, jnp.sum(leaf_w, 0), lin)


def moments_step(spec: ModelSpec, params: HMEParams, mom: Moments, opts: FitOptions) -> HMEParams:
    """New parameters from summed moments: the Gaussian experts' closed-form M-step and every gate's bound
    step (the maximiser of its quadratic minoriser with the ridge)."""
    mask = np.asarray(spec.tree.child_mask, bool)
    experts = moments_m_step(spec, params.experts, mom.gram, mom.rhs, mom.yy, mom.mass, opts)
    q = mom.gram.shape[-1]
    node_gram = jnp.einsum("gl,lij->gij", jnp.asarray(spec.tree.gate_leaf, mom.gram.dtype), mom.gram)
    pen = jnp.broadcast_to(jnp.asarray(opts.gate_alpha, mom.gram.dtype), (q,))
    curv = penalised_curvature(bound_curvature(node_gram, mask), mask, pen)
    free = solve_psd(curv, mom.gate_lin)  # (G, (B-1) q)
    G = free.shape[0]
    theta = jnp.concatenate([jnp.zeros((G, 1, q), free.dtype), free.reshape(G, -1, q)], axis=1)
    return HMEParams(GateParams(theta[..., 0], theta[..., 1:]), experts)


_chunk_moments = jax.jit(chunk_moments, static_argnums=0)
_moments_step = jax.jit(moments_step, static_argnums=0)
_penalty = jax.jit(penalty, static_argnums=0)


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

    def pooled_slopes(self, alpha) -> np.ndarray:
        """(p, k) ridge slopes of one linear fit of y on x to every row, ridge ``alpha`` ((p,) or scalar)."""
        p = self.n_features
        a = np.broadcast_to(np.asarray(alpha, np.float64), (p,))
        c = self.comoment
        return np.linalg.lstsq(c[:p, :p] + np.diag(a), c[:p, p:], rcond=None)[0]


def scan(source: ChunkSource, *, chunk_size: int = DEFAULT_CHUNK_SIZE, dtype=np.float64, sample_rows: int =
         DEFAULT_INIT_ROWS, random_state: int = 0) -> Scan:
    """One pass over ``source``: checks every chunk (finite values, non-negative weights), merges the chunks'
    weighted means and co-moments pairwise (Chan, Golub & LeVeque 1979) and keeps ``sample_rows`` rows drawn
    uniformly without replacement."""
    n, p, k = source.n_rows, source.n_features, source.n_targets
    rng = np.random.default_rng(random_state)
    pick = np.sort(rng.choice(n, size=min(n, sample_rows), replace=False))
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
        z = np.concatenate([X, y], axis=1).astype(np.float64)
        wc = w.astype(np.float64)
        tc = wc.sum()
        if tc > 0:
            mc = wc @ z / tc
            dz = z - mc
            cc = (dz * wc[:, None]).T @ dz
            delta = mc - mean
            new_total = total + tc
            com = com + cc + np.outer(delta, delta) * (total * tc / new_total)
            mean = mean + delta * (tc / new_total)
            total = new_total
            pos = wc > 0
            n_pos += int(pos.sum())
            x_min = np.minimum(x_min, X[pos].min(0))
            x_max = np.maximum(x_max, X[pos].max(0))
        sel = pick[(pick >= start) & (pick < start + c)] - start
        if sel.size:
            parts.append((X[sel], y[sel], w[sel]))
        start += c
    if not total > 0:
        raise ValueError("sample_weight must have a positive sum")
    sample = tuple(np.concatenate([part[i] for part in parts]) for i in range(3))
    return Scan(n, n_pos, total, mean, com, x_min, x_max, sample)


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


def _options(spec, scan_: Scan, dtype, tol, alpha, gate_alpha, var_floor, coef_target) -> FitOptions:
    """The traced options, validated as :func:`hme.fitting.prepare_fit` does, with the variance floor relative to
    every row's variance of y."""
    Xs, ys, ws = scan_.sample
    opts = prepare_fit(spec, Xs, ys, sample_weight=ws, tol=tol, alpha=alpha, gate_alpha=gate_alpha,
                       var_floor=var_floor, coef_target=coef_target).opts
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


def _pass(spec, params, source: ChunkSource, chunk: int, dtype, x_mean, y_mean) -> Moments:
    """Moments of every row at ``params`` (centred coordinates): one pass, chunks padded to ``chunk`` rows."""
    acc = None
    xm, ym = x_mean.astype(dtype), y_mean.astype(dtype)
    for X, y, w in prefetch(source.chunks(chunk, dtype)):
        c = X.shape[0]
        if c < chunk:  # zero-weight padding: one compiled program for every chunk
            X, y, w = (np.pad(a, ((0, chunk - c),) + ((0, 0),) * (a.ndim - 1)) for a in (X, y, w))
            X[c:], y[c:] = xm, ym
        m = jax.device_get(_chunk_moments(spec, params, X - xm, y - ym, w))
        acc = Moments(*(np.asarray(a, np.float64) for a in m)) if acc is None else _add(acc, m)
    return acc


def _objective(spec, params, mom: Moments, opts) -> float:
    return (float(mom.log_lik) - float(_penalty(spec, params, opts))) / float(mom.total)


def fit_em_streaming(
    spec: ModelSpec,
    X,
    y=None,
    *,
    sample_weight=None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype=None,
    start_params: HMEParams | None = None,
    init_rows: int = DEFAULT_INIT_ROWS,
    n_init: int = 1,
    n_candidates: int | None = None,
    random_state: int = 0,
    max_iter: int = 200,
    tol: float = 1e-6,
    alpha=DEFAULT_ALPHA,
    gate_alpha=DEFAULT_GATE_ALPHA,
    var_floor=None,
    coef_target=None,
    scan_result: Scan | None = None,
    verbose: int = 0,
) -> StreamResult:
    """Exact EM on data read in chunks (module docstring): bounded memory whatever the number of rows.

    Parameters
    ----------
    spec : ModelSpec with Gaussian experts and softmax gates on the experts' inputs
    X, y, sample_weight : NumPy arrays, ``np.memmap``, zarr or dask arrays (``X`` (n, p), ``y`` (n,) or (n, k)),
        or ``X`` a :class:`hme.sources.Parquet` dataset naming its columns (then ``y=None``)
    chunk_size : rows per chunk (memory ∝ chunk_size · (p + k))
    dtype : the fit's float type (default float64 under ``jax_enable_x64``, else float32)
    start_params : parameters to start from (original inputs); default: an in-memory :func:`hme.fit_em` on
        ``init_rows`` rows drawn uniformly, with ``n_init``, ``n_candidates`` and ``random_state``
    max_iter, tol : passes and the relative-change stopping rule of :func:`hme.fit_em`
    alpha, gate_alpha, var_floor, coef_target : the penalties of :func:`hme.fit_em`
    scan_result : a :func:`scan` of the same data to reuse (skips the first pass)
    verbose : print one line per pass (objective, change, seconds)
    """
    from .em import DEFAULT_N_CANDIDATES, fit_em

    check_streamable(spec)
    if not (isinstance(chunk_size, (int, np.integer)) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
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
    opts = _options(spec, s, dtype, tol, alpha, gate_alpha, var_floor, coef_target)
    Xs, ys, ws = s.sample
    if start_params is None:
        start = fit_em(spec, Xs, ys, sample_weight=ws, n_init=n_init, random_state=random_state,
                       n_candidates=DEFAULT_N_CANDIDATES if n_candidates is None else n_candidates,
                       max_iter=max_iter, tol=tol, alpha=alpha, gate_alpha=gate_alpha, var_floor=var_floor,
                       coef_target=coef_target)
        start_params, start_objective = start.params, float(start.objective)
    else:
        start_objective = float("nan")
    x_mean, y_mean = s.x_mean, s.y_mean
    to_dev = lambda a: jnp.asarray(a, dtype)
    params = _to_centred(spec, jax.tree_util.tree_map(to_dev, start_params), to_dev(x_mean), to_dev(y_mean))
    history, seconds = [], []
    good, converged, failed, k = params, False, False, 0
    prev = -np.inf
    while True:
        t0 = time.perf_counter()
        mom = _pass(spec, params, source, chunk, dtype, x_mean, y_mean)
        obj = _objective(spec, params, mom, opts)
        seconds.append(time.perf_counter() - t0)
        history.append(obj)
        if verbose:
            print(f"pass {k}: objective {obj:.8f} (change {obj - prev:+.3e}) in {seconds[-1]:.2f} s", flush=True)
        if not np.isfinite(obj):
            failed = True
            break
        good, last = params, mom
        converged = k > 0 and abs(obj - prev) <= tol * max(abs(prev), 1.0)
        if converged or k >= max_iter:
            break
        prev = obj
        params = _moments_step(spec, params, Moments(*(jnp.asarray(a, dtype) for a in mom)), opts)
        k += 1
    if failed and k == 0:
        raise FloatingPointError("the streamed fit's start has a non-finite log-likelihood")
    final = _from_centred(spec, good, to_dev(x_mean), to_dev(y_mean))
    finite = [h for h in history if np.isfinite(h)]
    return StreamResult(params=jax.tree_util.tree_map(np.asarray, final), objective=finite[-1],
                        log_likelihood=float(last.log_lik), history=np.asarray(history), n_iter=k - int(failed),
                        converged=bool(converged), failed=failed, pass_seconds=np.asarray(seconds),
                        start_objective=start_objective, leaf_mass=np.asarray(last.mass), scan=s, chunk_size=chunk)


# -- online EM ----------------------------------------------------------------------------------------------


class OnlineEM:
    """Stepwise EM over batches that arrive one at a time (module docstring); :meth:`update` takes a batch.

    The first batch is fitted in memory by :func:`hme.fit_em` (``fit_options``: n_init, n_candidates,
    random_state, max_iter, tol) and fixes the centring of inputs and targets and the variance floor; every
    later batch moves the running moments by ``γ_t = (t + 1)^{-step_exponent}`` and re-solves the parameters.
    ``x_ref``, ``y_ref`` are the first batch's weighted means (the origin of the internal coordinates);
    ``history`` holds each later batch's mean log-likelihood under the parameters before it (a prequential
    score).
    """

    def __init__(self, spec: ModelSpec, *, step_exponent: float = STEP_EXPONENT, alpha=DEFAULT_ALPHA,
                 gate_alpha=DEFAULT_GATE_ALPHA, var_floor=None, coef_target=None, **fit_options):
        check_streamable(spec)
        if not 0.5 < step_exponent <= 1.0:
            raise ValueError(f"step_exponent must lie in (0.5, 1] (stepwise EM's step sizes), got {step_exponent!r}")
        self.spec, self.step_exponent = spec, float(step_exponent)
        self.penalties = dict(alpha=alpha, gate_alpha=gate_alpha, var_floor=var_floor, coef_target=coef_target)
        self.fit_options = fit_options
        self.n_batches, self.n_seen = 0, 0.0
        self.history: list[float] = []

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
        prep = prepare_fit(spec, X, y, sample_weight=sample_weight)  # checks the batch, pads it to a reused size
        if prep.X.dtype != self._dtype:
            raise TypeError(f"batches must keep the first batch's dtype {self._dtype}, got {prep.X.dtype}")
        xr, yr = jnp.asarray(self.x_ref, self._dtype), jnp.asarray(self.y_ref, self._dtype)
        pad = prep.weight == 0  # padding rows: keep them at the origin of the centred coordinates
        Xc = jnp.where(pad[:, None], 0.0, prep.X - xr)
        yc = jnp.where(pad[:, None], 0.0, prep.y - yr)
        mom = jax.device_get(_chunk_moments(spec, self._params, Xc, yc, prep.weight))
        mom = Moments(*(np.asarray(a, np.float64) for a in mom))
        total = float(mom.total)
        self.history.append(float(mom.log_lik) / total)
        t = self.n_batches
        gamma = (t + 1.0) ** -self.step_exponent
        self._avg = _add(_scale(self._avg, 1.0 - gamma), _scale(mom, gamma / total))
        self.n_seen += total
        sums = Moments(*(jnp.asarray(a, self._dtype) for a in _scale(self._avg, self.n_seen)))
        self._params = _moments_step(spec, self._params, sums, self._opts)
        self.n_batches += 1
        return self

    def _first(self, X, y, sample_weight):
        from .em import fit_em

        spec = self.spec
        res = fit_em(spec, X, y, sample_weight=sample_weight, **self.penalties, **self.fit_options)
        prep = prepare_fit(spec, X, y, sample_weight=sample_weight, **self.penalties)
        w = np.asarray(prep.weight, np.float64)
        self._dtype = prep.X.dtype
        self.x_ref = (w @ np.asarray(prep.X, np.float64)) / w.sum()
        self.y_ref = (w @ np.asarray(prep.y, np.float64)) / w.sum()
        self._opts = prep.opts
        xr, yr = jnp.asarray(self.x_ref, self._dtype), jnp.asarray(self.y_ref, self._dtype)
        self._params = _to_centred(spec, res.params, xr, yr)
        pad = prep.weight == 0
        Xc = jnp.where(pad[:, None], 0.0, prep.X - xr)
        yc = jnp.where(pad[:, None], 0.0, prep.y - yr)
        mom = Moments(*(np.asarray(a, np.float64) for a in jax.device_get(
            _chunk_moments(spec, self._params, Xc, yc, prep.weight))))
        self._avg = _scale(mom, 1.0 / float(mom.total))
        self.n_seen = float(mom.total)
        self.n_batches = 1
        return self
