r"""What a finished fit leaves behind, as NumPy arrays: the estimators store these fields as their fitted attributes.

:func:`record_fit` takes an engine's :class:`~hme.fitting.EMResult` and the training data and returns a
:class:`FitRecord`: the winner's parameters in canonical leaf order (so that the same optimum always gives the same
parameter table), the training range of the gates' inputs and each expert's own input box (for clipping at
prediction), and every restart's record with a readable reason where it degenerated.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from ..inference import canonicalize
from ..model import expert_boxes, gate_path_probs, posteriors
from ..params import HMEParams
from ..spec import ModelSpec
from .restarts import EMResult


class FitRecord(NamedTuple):
    """A fit's outcome; the estimators' fitted attributes are these names with a trailing underscore."""

    params: HMEParams  # the best restart's parameters, canonical leaf order, NumPy
    x_min: np.ndarray  # (p,) training range of the inputs (rows of positive weight)
    x_max: np.ndarray
    expert_input_min: np.ndarray  # (L, p_e) each expert's input box (:func:`hme.model.expert_boxes`)
    expert_input_max: np.ndarray
    n_iter: int
    converged: bool
    lower_bound: float  # the final penalised mean log-likelihood
    lower_bounds: np.ndarray  # its history (finite entries)
    log_likelihood: float  # Σ_t w_t log p(y_t | x_t)
    best_restart: int
    restart_lower_bounds: list  # one history per restart
    restart_converged: np.ndarray  # (R,)
    restart_failed: np.ndarray  # (R,) the objective turned non-finite
    restart_leaf_counts: np.ndarray  # (R, L) posterior sample counts, each restart's own leaf order
    restart_collapsed: np.ndarray  # (R, L) Gaussian covariance on the variance floor
    restart_degenerate: list  # (R,) why each restart degenerated, '' when healthy


def degeneracy(counts: np.ndarray, collapsed: np.ndarray) -> str:
    """Readable reasons one restart degenerated ('' when healthy); leaves in the restart's own order."""
    reasons = []
    empty = np.flatnonzero(counts < 1.0)
    if empty.size:
        reasons.append(f"empty leaves {empty.tolist()} (posterior count < 1 sample)")
    flat = np.flatnonzero(collapsed)
    if flat.size:
        reasons.append(f"leaves {flat.tolist()} with expert variance collapsed onto var_floor")
    return "; ".join(reasons)


def _finite(h) -> np.ndarray:
    h = np.asarray(h)
    return h[np.isfinite(h)]


def record_fit(spec: ModelSpec, result: EMResult, X: np.ndarray, y, sample_weight: np.ndarray) -> FitRecord:
    """The :class:`FitRecord` of ``result`` (fitted on ``X`` (n, p), ``y`` as the core takes it, weights (n,)).
    Call it in the fit's precision (:func:`jax.enable_x64` for float64 data)."""
    res = jax.device_get(result)
    w = np.asarray(sample_weight, np.float64)
    positive = w > 0
    x_ref = np.average(np.asarray(X, np.float64), axis=0, weights=w)
    canon = canonicalize(spec, res.params, x_ref)  # siblings sorted by their experts' mean prediction at x_ref
    lo, hi = expert_boxes(spec, posteriors(spec, canon, X, y)["leaf"], gate_path_probs(spec, canon, X), X,
                          sample_weight)
    counts = np.asarray(res.restart_leaf_count, np.float64)
    collapsed = np.asarray(res.restart_collapsed, bool)
    return FitRecord(
        params=jax.tree_util.tree_map(np.asarray, canon),
        x_min=np.min(X[positive], axis=0),
        x_max=np.max(X[positive], axis=0),
        expert_input_min=lo,
        expert_input_max=hi,
        n_iter=int(res.n_iter),
        converged=bool(res.converged),
        lower_bound=float(res.objective),
        lower_bounds=_finite(res.history),
        log_likelihood=float(res.log_likelihood),
        best_restart=int(res.best_restart),
        restart_lower_bounds=[_finite(h) for h in np.asarray(res.restart_history)],
        restart_converged=np.asarray(res.restart_converged),
        restart_failed=np.asarray(res.restart_failed),
        restart_leaf_counts=counts,
        restart_collapsed=collapsed,
        restart_degenerate=[degeneracy(c, k) for c, k in zip(counts, collapsed, strict=True)],
    )
