r"""The pooled (single-expert) fit that the experts' ridge can pull towards.

With ``coef_target`` = the slopes of one GLM fitted to all the data, the expert penalty
``½ Σ_l (B_l - T)ᵀ diag(α) (B_l - T)`` lets an expert leave the pooled model only as far as its own data
support: a deep tree on little data degrades towards the linear model instead of fitting noise. The pooled
fit uses the same ridge ``diag(α)`` on its slopes:

* Gaussian: weighted ridge least squares, ``T = (X̃ᵀWX̃ + diag α)⁻¹ X̃ᵀW Ỹ`` on centred inputs and targets;
* categorical (class 0 the reference) and Poisson: Newton's method with step halving on the penalised
  weighted log-likelihood (concave, so it converges from 0).

NumPy/SciPy in float64; returns slopes of shape (p_e, n_expert_outputs).
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, logsumexp

from .spec import ModelSpec

MAX_NEWTON = 100


def _newton(f, grad_hess, theta):
    """Maximise a concave f by Newton steps with halving; theta is a flat vector."""
    val = f(theta)
    for _ in range(MAX_NEWTON):
        g, H = grad_hess(theta)
        step = np.linalg.solve(H, g)  # H: negative Hessian, positive definite
        t = 1.0
        while t > 1e-10:
            cand = theta + t * step
            new = f(cand)
            if new >= val - 1e-12 * abs(val):
                break
            t *= 0.5
        if t <= 1e-10:
            break
        gain = new - val
        theta, val = cand, new
        if gain <= 1e-12 * max(1.0, abs(val)):
            break
    return theta


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
    if spec.expert == "gaussian":
        Y = np.asarray(y, np.float64).reshape(n, -1)
        G = D.T @ (w[:, None] * D) + np.diag(pen)
        return np.linalg.lstsq(G, D.T @ (w[:, None] * Y), rcond=None)[0][1:]
    if spec.expert == "poisson":
        Y = np.asarray(y, np.float64).reshape(n, -1)
        out = np.zeros((p, k))
        for j in range(k):
            yj = Y[:, j]

            def f(th, yj=yj):
                eta = D @ th
                return np.sum(w * (yj * eta - np.exp(eta) - gammaln(yj + 1))) - 0.5 * np.sum(pen * th**2)

            def gh(th, yj=yj):
                mu = np.exp(D @ th)
                return D.T @ (w * (yj - mu)) - pen * th, D.T @ ((w * mu)[:, None] * D) + np.diag(pen)

            th0 = np.zeros(p + 1)
            th0[0] = np.log(max(w @ yj / w.sum(), 1e-12))
            out[:, j] = _newton(f, gh, th0)[1:]
        return out
    # categorical: y one-hot / soft (n, C) or labels (n,)
    Y = np.asarray(y)
    C = spec.n_targets
    if Y.ndim == 1:
        Y = np.eye(C)[Y.astype(int)]
    Y = Y.astype(np.float64)
    q = p + 1

    def logits(th):
        return np.column_stack([np.zeros(n), D @ th.reshape(C - 1, q).T])

    def f(th):
        z = logits(th)
        return np.sum(w[:, None] * Y * (z - logsumexp(z, axis=1, keepdims=True))) - 0.5 * np.sum(
            np.tile(pen, C - 1) * th**2)

    def gh(th):
        z = logits(th)
        P = np.exp(z - logsumexp(z, axis=1, keepdims=True))[:, 1:]  # (n, C-1)
        tot = Y.sum(1)
        g = ((w[:, None] * (Y[:, 1:] - tot[:, None] * P)).T @ D).reshape(-1) - np.tile(pen, C - 1) * th
        H = np.zeros(((C - 1) * q, (C - 1) * q))
        for b in range(C - 1):
            for c in range(C - 1):
                v = w * tot * P[:, b] * ((b == c) - P[:, c])
                H[b * q:(b + 1) * q, c * q:(c + 1) * q] = D.T @ (v[:, None] * D)
        return g, H + np.diag(np.tile(pen, C - 1)) + 1e-10 * np.eye(len(th))

    th = _newton(f, gh, np.zeros((C - 1) * q))
    return th.reshape(C - 1, q)[:, 1:].T
