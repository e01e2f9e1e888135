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
