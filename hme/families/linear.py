"""Linear predictors of all leaves at once, the experts' ridge, and a NumPy Newton maximiser for pooled fits."""

import jax.numpy as jnp
import numpy as np

from .._linalg import solve_psd


def theta(experts):
    """(L, 1 + p, k): the intercept as row 0 of each leaf's coefficient matrix."""
    return jnp.concatenate([experts.intercept[:, None, :], experts.coef], axis=1)


def linear_predictor(experts, design):
    """``design @ theta`` for all leaves: (n, L, k). ``design`` is (n, q), shared by the leaves (one GEMM), or
    (n, L, q), one design per leaf (inputs clipped to each expert's own box at prediction)."""
    th = theta(experts)
    L, q, k = th.shape
    if design.ndim == 3:
        return jnp.einsum("nlq,lqk->nlk", design, th)
    return (design @ th.transpose(1, 0, 2).reshape(q, L * k)).reshape(design.shape[0], L, k)


def ridge_columns(alpha, q, dtype):
    """The expert ridge per design column, (q,): ``alpha`` (scalar or (q,)) with the intercept column free."""
    return jnp.broadcast_to(jnp.asarray(alpha, dtype), (q,)).at[0].set(0.0)


def slope_deviation(coef, target):
    """``coef - target``: (L, p, k) slopes minus the ridge's centre (p, k); the slopes themselves for no target."""
    return coef if target is None else coef - jnp.asarray(target, coef.dtype)[None]


#: Newton steps at most in :func:`newton_maximise`
MAX_NEWTON = 100


def newton_maximise(f, grad_hess, theta):
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


def tie_rows(theta_, rows):
    """``theta_`` (L, q, k) with the rows ``rows`` (design rows of shared coefficients) set to their mean over
    the leaves: the nearest parameters (in the Euclidean sense) that satisfy the fixed-effect constraint."""
    if not rows:
        return theta_
    idx = jnp.asarray(rows)
    return theta_.at[:, idx, :].set(jnp.broadcast_to(jnp.mean(theta_[:, idx, :], 0), theta_[:, idx, :].shape))


def tied_solve(a, b, rows):
    r"""Minimiser of ``Σ_l ½ θ_lᵀ A_l θ_l - b_lᵀ θ_l`` over θ (L, q, k) whose rows ``rows`` are common to all
    leaves (fixed effects), for positive definite ``a`` (L, q, q) and ``b`` (L, q, k); ``rows`` empty: the leaves'
    own solutions ``A_l⁻¹ b_l``.

    With the rows split into the leaves' own (f) and the shared (s) ones, the normal equations have an arrow
    structure, solved through the Schur complement of the own blocks:

    .. math::  S = Σ_l A_{l,ss} - A_{l,sf} A_{l,ff}^{-1} A_{l,fs},  \qquad
               γ = S^{-1} Σ_l (b_{l,s} - A_{l,sf} A_{l,ff}^{-1} b_{l,f}),  \qquad
               θ_{l,f} = A_{l,ff}^{-1} (b_{l,f} - A_{l,fs} γ)

    (one batched solve of the own blocks and one small solve; no (L q)² system).
    """
    if not rows:
        return solve_psd(a, b)
    q = a.shape[-1]
    s = np.asarray(sorted(rows))
    f = np.setdiff1d(np.arange(q), s)
    a_ff, a_fs, a_ss = a[:, f][:, :, f], a[:, f][:, :, s], a[:, s][:, :, s]
    sol = solve_psd(a_ff, jnp.concatenate([b[:, f], a_fs], -1))  # (L, |f|, k + |s|)
    k = b.shape[-1]
    own_b, own_a = sol[..., :k], sol[..., k:]
    schur = jnp.sum(a_ss - jnp.einsum("lfs,lft->lst", a_fs, own_a), 0)
    rhs = jnp.sum(b[:, s] - jnp.einsum("lfs,lfk->lsk", a_fs, own_b), 0)
    gamma = solve_psd(schur, rhs)  # (|s|, k)
    own = own_b - jnp.einsum("lfs,sk->lfk", own_a, gamma)
    out = jnp.zeros(b.shape, sol.dtype).at[:, f].set(own)
    return out.at[:, s].set(jnp.broadcast_to(gamma, (a.shape[0],) + gamma.shape))
