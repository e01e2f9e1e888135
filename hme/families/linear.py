"""Linear predictors of all leaves at once, the experts' ridge, and a NumPy Newton maximiser for pooled fits."""

import jax.numpy as jnp
import numpy as np


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
