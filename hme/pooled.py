r"""The pooled (single-expert) fit that the experts' ridge can pull towards.

With ``coef_target`` = the slopes of one GLM fitted to all the data, the expert penalty
``½ Σ_l (B_l - T)ᵀ diag(α) (B_l - T)`` lets an expert leave the pooled model only as far as its own data
support: a deep tree on little data degrades towards the linear model instead of fitting noise. The pooled
fit uses the same ridge ``diag(α)`` on its slopes:

each expert family fits itself (:meth:`hme.families.ExpertFamily.pooled_fit`: weighted ridge least squares for
Gaussian experts, Newton's method with halving for GLM experts), in NumPy float64 on centred inputs. Returns
slopes of shape (p_e, n_expert_outputs).
"""

from __future__ import annotations

import numpy as np

from .spec import ModelSpec


def pooled_slopes(spec: ModelSpec, X, y, sample_weight, alpha) -> np.ndarray:
    """Slopes (p_e, k) of one expert of ``spec``'s family fitted to all rows, with ridge ``alpha`` ((p_e,) or
    scalar) on the slopes. ``y`` as the core takes it: Gaussian/Poisson (n, k); categorical integer labels (n,)
    or one-hot (n, C)."""
    X = np.asarray(X, np.float64)
    Xe = X if spec.expert_features is None else X[:, list(spec.expert_features)]
    n, p = Xe.shape
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    a = np.broadcast_to(np.asarray(alpha, np.float64), (p,))
    k = spec.n_expert_outputs
    if p == 0:
        return np.zeros((0, k))
    xm = w @ Xe / w.sum()
    Xc = Xe - xm
    D = np.column_stack([np.ones(n), Xc])
    pen = np.concatenate([[0.0], a])
    return spec.expert_family.pooled_fit(D, y, w, pen, spec.n_targets)[1:]


def residual_covariance_from_moments(comoment, p: int, slopes) -> np.ndarray:
    r"""(k, k) residual covariance of the linear fit with ``slopes`` (p, k), from the centred co-moment matrix
    ``comoment`` ((p + k, p + k) of [x, y], divided by the total weight): ``C_yy - Bᵀ C_xy - C_yx B + Bᵀ C_xx B``."""
    c = np.asarray(comoment, np.float64)
    b = np.asarray(slopes, np.float64).reshape(p, -1)
    cross = b.T @ c[:p, p:]
    res = c[p:, p:] - cross - cross.T + b.T @ c[:p, :p] @ b
    return 0.5 * (res + res.T)


def pooled_noise_scale(spec: ModelSpec, X, y, sample_weight, slopes, var_floor: float) -> np.ndarray | None:
    """The Gaussian experts' ridge scale S (k, k): the residual covariance of the pooled fit with ``slopes``
    (its least-squares intercept), plus ``var_floor`` times each output's variance, so that S is positive
    definite when the pooled fit is exact. None for families without a noise covariance."""
    if not spec.expert_family.has_cov:
        return None
    X = np.asarray(X, np.float64)
    Xe = X if spec.expert_features is None else X[:, list(spec.expert_features)]
    Y = np.asarray(y, np.float64).reshape(Xe.shape[0], -1)
    w = np.ones(Xe.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    Z = np.concatenate([Xe, Y], 1)
    dz = Z - (w @ Z) / w.sum()
    com = (dz * w[:, None]).T @ dz / w.sum()
    p = Xe.shape[1]
    return noise_scale_from_moments(com, p, slopes, var_floor)


def noise_scale_from_moments(comoment, p: int, slopes, var_floor: float) -> np.ndarray:
    """:func:`pooled_noise_scale` from the normalised centred co-moment matrix of [x, y] (streamed fits)."""
    c = np.asarray(comoment, np.float64)
    var_y = np.diagonal(c)[p:]
    floor = var_floor * np.where(var_y > 0, var_y, 1.0)
    slopes = np.zeros((p, var_y.shape[0])) if slopes is None else slopes
    return residual_covariance_from_moments(c, p, slopes) + np.diag(floor)
