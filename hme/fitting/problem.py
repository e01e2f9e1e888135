r"""The problem every fitting engine solves, set up once: validated arrays, the traced numeric options, padding.

:func:`prepare_fit` turns user input into a :class:`Prepared` problem (clear ``ValueError``/``TypeError`` messages,
never a JAX traceback): ``X`` (n₊, p) in the fit's dtype, ``y`` (n₊, k) as the expert family takes it, weights
(n₊,), one PRNG key per restart and :class:`FitOptions`. Rows are padded with zero weight to
n₊ = :func:`hme._linalg.padded_length` (n), so that nearby sample sizes share one compiled program.
:func:`center_inputs` then centres X at its weighted mean (an exact reparametrisation) inside the compiled fit and
builds the design matrices (:class:`FitData`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import code_space, compile_cache
from .. import gates as _gates
from .._linalg import padded_length
from ..init import INIT_METHODS
from ..model import Design, make_design, prepare_targets
from ..params import HMEParams, cast_params, check_params
from ..sharding import padded_rows, place_rows
from ..spec import ModelSpec

#: Default ridge on gate coefficients (penalty ½ α Σ θ², on the scale of the summed log-likelihood).
DEFAULT_GATE_ALPHA = 1e-4
#: Default ridge on expert slopes (intercepts are not penalised).
DEFAULT_ALPHA = 1e-6
#: Default variance floor, relative to the (weighted) variance of each output.
DEFAULT_VAR_FLOOR = 1e-6


class FitOptions(NamedTuple):
    """Numeric hyperparameters, traced (changing them does not recompile)."""

    tol: jax.Array
    alpha: jax.Array  # () or (q,): ridge on expert coefficients per design column (column 0, the intercept, free)
    gate_alpha: jax.Array
    var_floor: jax.Array  # (n_outputs,), absolute (prepare_fit scales the relative floor by each output's variance)
    coef_target: jax.Array | None = None  # (p_e, k): the expert slopes the ridge pulls towards (default 0)
    coef_scale: jax.Array | None = None  # (m, m): Gaussian experts' ridge is ½ tr(S⁻¹ ΔBᵀ diag(α) ΔB) (default I)


class FitData(NamedTuple):
    """The arrays one fit iterates on: design matrices, targets (n, k) and sample weights (n,)."""

    design: Design
    y: jax.Array
    weight: jax.Array


class Prepared(NamedTuple):
    """Validated, padded inputs of a fit: rows beyond n carry zero weight."""

    X: jax.Array
    y: jax.Array
    weight: jax.Array
    keys: jax.Array  # (n_init, 2): one PRNG key per restart
    opts: FitOptions
    start_params: HMEParams | None
    user_init: bool


def center_inputs(spec: ModelSpec, X: jax.Array, y: jax.Array, w: jax.Array) -> tuple[FitData, jax.Array]:
    """Centre X at its weighted mean x̄ = wᵀX / Σw and build the design: (FitData, x̄)."""
    x_mean = (w @ X) / jnp.sum(w) if X.shape[1] else jnp.zeros((0,), X.dtype)
    return FitData(make_design(spec, X - x_mean), y, w), x_mean


def check_n_candidates(n_candidates) -> int:
    """``n_candidates`` as an int, or a ValueError."""
    if not (isinstance(n_candidates, (int, np.integer)) and not isinstance(n_candidates, bool) and n_candidates >= 1):
        raise ValueError(f"n_candidates must be a positive integer, got {n_candidates!r}")
    return int(n_candidates)


def check_finite(name: str, a) -> None:
    """A ValueError naming ``name`` when ``a`` holds NaN or infinity."""
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinity")


def _coef_scale(spec: ModelSpec, coef_scale) -> np.ndarray | None:
    """``coef_scale`` (a positive number, (m,) variances or an (m, m) covariance) as an (m, m) float64 matrix."""
    if coef_scale is None:
        return None
    if not spec.expert_family.has_cov:
        raise ValueError(f"coef_scale is the noise scale of Gaussian experts' ridge; {spec.expert!r} experts have none")
    m = spec.n_targets
    s = np.asarray(coef_scale, np.float64)
    if s.ndim < 2:
        s = np.diag(np.broadcast_to(s, (m,))) if s.ndim == 0 or s.shape == (m,) else s
    if s.shape != (m, m) or not np.all(np.isfinite(s)) or not np.allclose(s, s.T):
        raise ValueError(f"coef_scale must be a positive number, {m} variances or a symmetric ({m}, {m}) matrix, "
                         f"got shape {np.shape(coef_scale)}")
    if not np.linalg.eigvalsh(s).min() > 0:
        raise ValueError("coef_scale must be positive definite")
    return s


def _ridges(spec: ModelSpec, alpha, gate_alpha, coef_target):
    """The expert ridge per design column (intercept free), the gate ridge and the slopes' target, as float64."""
    a = np.asarray(alpha, np.float64)
    ga = np.asarray(gate_alpha, np.float64)
    if not (np.all(a >= 0) and np.all(np.isfinite(a)) and np.all(ga >= 0) and np.all(np.isfinite(ga))):
        raise ValueError("alpha and gate_alpha must be finite and >= 0")
    if ga.ndim > 1 or (ga.ndim == 1 and (not _gates.uses_node_gram(spec) or ga.shape[0] != spec.n_gate_features + 1)):
        raise ValueError("gate_alpha must be a scalar, or (softmax gates) one value for the biases followed by one "
                         f"per gate feature ({spec.n_gate_features + 1} in all); got shape {ga.shape} for "
                         f"{spec.gate!r} gates")
    p_e = spec.n_expert_features
    if a.ndim > 1 or (a.ndim == 1 and a.shape[0] != p_e):
        raise ValueError(f"alpha must be a scalar or have one value per expert feature ({p_e}), got shape {a.shape}")
    a = a if a.ndim == 0 else np.concatenate([[0.0], a])  # per design column; the intercept is free
    if coef_target is not None:
        coef_target = np.asarray(coef_target, np.float64)
        if coef_target.shape != (p_e, spec.n_expert_outputs) or not np.all(np.isfinite(coef_target)):
            raise ValueError(f"coef_target must be finite with shape ({p_e}, {spec.n_expert_outputs}), got "
                             f"{coef_target.shape}")
    return a, ga, coef_target


def _arrays(spec: ModelSpec, X, y, sample_weight):
    """X (n, p) floating, y (n, k) as the family takes it, w (n,), all checked."""
    X = jnp.asarray(X)
    if not jnp.issubdtype(X.dtype, jnp.floating):
        X = X.astype(jnp.float32 if not jax.config.jax_enable_x64 else jnp.float64)
    dtype = X.dtype
    if X.ndim != 2 or X.shape[1] != spec.n_features:
        raise ValueError(f"X must have shape (n_samples, {spec.n_features}), got {X.shape}")
    n = X.shape[0]
    y = prepare_targets(spec, y, dtype)
    if y.shape[0] != n:
        raise ValueError(f"X has {n} samples but y has {y.shape[0]}")
    if y.shape[1] != spec.n_targets:
        raise ValueError(f"y must have {spec.n_targets} columns (n_targets) for this spec, got {y.shape[1]}")
    w = jnp.ones((n,), dtype) if sample_weight is None else jnp.asarray(sample_weight, dtype).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"sample_weight has {w.shape[0]} entries for {n} samples")
    check_finite("X", np.asarray(X))
    check_finite("y", np.asarray(y))
    check_finite("sample_weight", np.asarray(w))
    if np.any(np.asarray(w) < 0) or not np.sum(np.asarray(w)) > 0:
        raise ValueError("sample_weight must be non-negative with a positive sum")
    n_used = int(np.count_nonzero(np.asarray(w)))
    if n_used < spec.tree.n_leaves:
        raise ValueError(
            f"n_samples={n_used} (with positive weight) should be >= the tree's {spec.tree.n_leaves} leaves: every "
            "expert needs data. Use a smaller tree (depth, branching) or more samples."
        )
    spec.expert_family.check_targets(y)
    return X, y, w


def _absolute_var_floor(spec: ModelSpec, var_floor, y, w, dtype) -> jax.Array:
    """The relative floor times each output's weighted variance (1 where an output is constant)."""
    relative = np.asarray(DEFAULT_VAR_FLOOR if var_floor is None else var_floor, np.float64)
    if not (np.all(np.isfinite(relative)) and np.all(relative > 0)):
        raise ValueError(f"var_floor must be finite and > 0 (a fraction of each output's variance), got {var_floor!r}")
    wn = np.asarray(w, np.float64)
    yn = np.asarray(y, np.float64)
    var = wn @ (yn - wn @ yn / wn.sum()) ** 2 / wn.sum()
    floor = relative * np.where(var > 0, var, 1.0)
    return jnp.broadcast_to(jnp.asarray(floor, dtype), (spec.n_targets,))


def _restart_keys(random_state, n_init: int) -> jax.Array:
    if isinstance(random_state, (int, np.integer)):
        return jax.random.split(jax.random.PRNGKey(int(random_state)), n_init)
    key = jnp.asarray(random_state)
    if key.ndim == 2:  # one key per restart
        if key.shape[0] != n_init:
            raise ValueError(f"got {key.shape[0]} keys for n_init={n_init}")
        return key
    return jax.random.split(key, n_init)


def prepare_fit(
    spec: ModelSpec,
    X,
    y,
    *,
    sample_weight=None,
    init_params: str = "random",
    start_params: HMEParams | None = None,
    n_init: int = 1,
    random_state=0,
    max_iter: int = 200,
    tol: float = 1e-6,
    alpha=DEFAULT_ALPHA,
    gate_alpha=DEFAULT_GATE_ALPHA,
    var_floor=None,
    coef_target=None,
    coef_scale=None,
) -> Prepared:
    """Validate and pad a fit's input once, for every engine (:func:`hme.fit_em`, :func:`hme.fit_gradient`);
    the arguments mean what they mean there."""
    compile_cache.enable_default()
    code_space.ensure_code_space()
    if init_params not in INIT_METHODS:
        raise ValueError(f"init_params must be one of {INIT_METHODS}, got {init_params!r}")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (isinstance(n_init, (int, np.integer)) and n_init >= 1):
        raise ValueError(f"n_init must be a positive integer, got {n_init!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    alpha, gate_alpha, coef_target = _ridges(spec, alpha, gate_alpha, coef_target)
    coef_scale = _coef_scale(spec, coef_scale)
    X, y, w = _arrays(spec, X, y, sample_weight)
    dtype = X.dtype
    opts = FitOptions(tol=jnp.asarray(tol, dtype), alpha=jnp.asarray(alpha, dtype),
                      gate_alpha=jnp.asarray(gate_alpha, dtype),
                      var_floor=_absolute_var_floor(spec, var_floor, y, w, dtype),
                      coef_target=None if coef_target is None else jnp.asarray(coef_target, dtype),
                      coef_scale=None if coef_scale is None else jnp.asarray(coef_scale, dtype))
    keys = _restart_keys(random_state, int(n_init))
    if start_params is not None:
        check_params(spec, start_params)
        start_params = cast_params(start_params, dtype)
    n = X.shape[0]
    pad = padded_rows(n, padded_length(n)) - n
    if pad:  # zero-weight rows: nearby sample sizes reuse one compiled program
        X = jnp.pad(X, ((0, pad), (0, 0)))
        y = jnp.pad(y, ((0, pad), (0, 0)))
        w = jnp.pad(w, (0, pad))
    X, y, w = place_rows(X, y, w)  # split over the devices of a data-parallel context (hme.sharding)
    return Prepared(X=X, y=y, weight=w, keys=keys, opts=opts, start_params=start_params,
                    user_init=start_params is not None)
