"""Linear predictors of all leaves at once."""

import jax.numpy as jnp


def theta(experts):
    """(L, 1 + p, k): the intercept as row 0 of each leaf's coefficient matrix."""
    return jnp.concatenate([experts.intercept[:, None, :], experts.coef], axis=1)


def linear_predictor(experts, design):
    """``design @ theta`` for all leaves in one GEMM: (n, L, k)."""
    th = theta(experts)
    L, q, k = th.shape
    return (design @ th.transpose(1, 0, 2).reshape(q, L * k)).reshape(design.shape[0], L, k)
