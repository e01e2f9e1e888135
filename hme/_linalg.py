"""Hot kernels shared by the M-steps: weighted Gram matrices, batched solves, Newton ascent with halving."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import batched_linalg

#: Rows per block when streaming over samples. Fits inside the L2/L3 caches of a CPU core for the
#: Khatri-Rao block (chunk x q(q+1)/2) at q ~ 20, and is large enough to keep GEMMs efficient.
CHUNK = 2048
#: Above this many design columns the packed Khatri-Rao block gets too wide; use (K q) x q GEMMs instead.
_KR_MAX_COLUMNS = 48


def padded_length(n: int) -> int:
    """Rows after padding: the next power of two (at least 16) up to ``CHUNK``, then whole ``CHUNK`` blocks.

    Fits pad with zero-weight rows, so data sets of nearby sizes share one compiled program."""
    if n <= CHUNK:
        return max(16, 1 << max(n - 1, 0).bit_length())
    return -(-n // CHUNK) * CHUNK


def _blocks(a: jax.Array, chunk: int) -> jax.Array:
    return a.reshape((a.shape[0] // chunk, chunk) + a.shape[1:])


def weighted_gram(design: jax.Array, weights: jax.Array) -> jax.Array:
    r"""Weighted Gram matrices ``G[k] = Σ_t W[t, k] d_t d_tᵀ``.

    Parameters
    ----------
    design : array of shape (n_samples, q)
    weights : array of shape (n_samples, K)

    Returns
    -------
    array of shape (K, q, q)

    Notes
    -----
    For small q the rows' packed outer products ``z_t = vec_upper(d_t d_tᵀ)`` (q(q+1)/2 entries) are built one
    block of rows at a time and contracted with one GEMM ``W_blockᵀ z_block``. This does half the flops of
    ``2 n K q²`` (symmetry) and never materialises an (n, K, q) intermediate, so memory stays O(n K + n q).
    """
    n, q = design.shape
    K = weights.shape[1]
    chunk = min(CHUNK, n)
    if n % chunk:
        pad = chunk - n % chunk
        design = jnp.pad(design, ((0, pad), (0, 0)))
        weights = jnp.pad(weights, ((0, pad), (0, 0)))
    if q <= _KR_MAX_COLUMNS:
        iu = np.triu_indices(q)

        def block(x, w):
            z = jnp.concatenate([x[:, i:] * x[:, i : i + 1] for i in range(q)], axis=1)
            return w.T @ z

        def unpack(packed):
            full = jnp.zeros((K, q, q), packed.dtype).at[:, iu[0], iu[1]].set(packed)
            return full + jnp.swapaxes(jnp.triu(full, 1), 1, 2)

        width = len(iu[0])
    else:

        def block(x, w):
            t = (w[:, :, None] * x[:, None, :]).reshape(x.shape[0], K * q)
            return (t.T @ x).reshape(K, q * q)

        def unpack(flat):
            return flat.reshape(K, q, q)

        width = q * q
    if design.shape[0] == chunk:
        return unpack(block(design, weights))

    def body(acc, xw):
        return acc + block(*xw), None

    acc, _ = jax.lax.scan(body, jnp.zeros((K, width), design.dtype), (_blocks(design, chunk), _blocks(weights, chunk)))
    return unpack(acc)


#: Elements of the per-block Kronecker factor in :func:`kron_gram` (32 MB in float64).
_KRON_BLOCK_ELEMENTS = 1 << 22


def kron_gram(design: jax.Array, factors: jax.Array) -> jax.Array:
    r"""Gram matrices of row-wise Kronecker products, ``C[u] = Σ_t (f_tu ⊗ d_t)(f_tu ⊗ d_t)ᵀ``.

    Parameters
    ----------
    design : array of shape (n_samples, q)
    factors : array of shape (n_samples, U, P)

    Returns
    -------
    array of shape (U, P q, P q), index ``(b, i)`` at ``b q + i``.

    Notes
    -----
    One batched GEMM per block of rows on the (rows, U, P q) Kronecker factor, so memory is
    O(block U P q) however many samples there are: the (n, U P²) weights of the same matrix written as P²
    weighted Grams would not fit in memory for tens of thousands of rows and twenty classes.
    """
    n, q = design.shape
    _, U, P = factors.shape
    chunk = min(CHUNK, max(16, _KRON_BLOCK_ELEMENTS // max(U * P * q, 1)))
    chunk = min(1 << (chunk.bit_length() - 1), n)  # a power of two: divides the padded lengths of fits
    if n % chunk:
        pad = chunk - n % chunk
        design = jnp.pad(design, ((0, pad), (0, 0)))
        factors = jnp.pad(factors, ((0, pad), (0, 0), (0, 0)))

    def block(x, f):
        a = (f[:, :, :, None] * x[:, None, None, :]).reshape(x.shape[0], U, P * q)
        return jnp.einsum("tui,tuj->uij", a, a)

    if design.shape[0] == chunk:
        return block(design, factors)

    def body(acc, xf):
        return acc + block(*xf), None

    zero = jnp.zeros((U, P * q, P * q), design.dtype)
    acc, _ = jax.lax.scan(body, zero, (_blocks(design, chunk), _blocks(factors, chunk)))
    return acc


def solve_psd(matrix: jax.Array, rhs: jax.Array) -> jax.Array:
    """Batched solve of symmetric positive (semi-)definite systems, with a relative jitter for safety.

    matrix: (..., P, P), rhs: (..., P) or (..., P, k). Blocked Cholesky in plain JAX operations
    (:mod:`hme.batched_linalg`: no LAPACK custom call, which can deadlock XLA's CPU thread pool).
    """
    P = matrix.shape[-1]
    eye = jnp.eye(P, dtype=matrix.dtype)
    scale = jnp.maximum(jnp.trace(matrix, axis1=-2, axis2=-1) / P, 1.0)
    jitter = (10 * jnp.finfo(matrix.dtype).eps) * scale
    out = batched_linalg.solve_psd(matrix + jitter[..., None, None] * eye, rhs)
    return jnp.where(jnp.isfinite(out), out, 0.0)


def newton_ascent(theta, direction, objective, f0, max_halvings: int = 12):
    """Per-unit step halving along ``direction`` until each unit's objective does not decrease.

    theta, direction : arrays of shape (U, ...) -- U independent units (gates or experts)
    objective : callable mapping parameters of shape (U, ...) to per-unit objectives of shape (U,)
    f0 : array of shape (U,), the objective at ``theta``

    Returns (new_theta, new_objective). A unit that finds no ascent within ``max_halvings`` keeps
    ``theta`` (a generalized M-step never decreases its objective).
    """
    U = f0.shape[0]
    eps = jnp.finfo(f0.dtype).eps
    # Allow roundoff-size differences: near the optimum the objective is flat to machine precision.
    slack = 16 * eps * (jnp.abs(f0) + 1.0)
    expand = lambda v: v.reshape((U,) + (1,) * (theta.ndim - 1))
    # a non-finite direction (a singular system, e.g. a unit without weight) stays non-finite at every step
    # length: such a unit keeps theta at once instead of running every halving (each one a pass over the data)
    finite = jnp.all(jnp.isfinite(direction.reshape(U, -1)), axis=1)
    direction = jnp.where(expand(finite), direction, 0.0)

    def cond(state):
        _, accepted, _, i = state
        return jnp.logical_and(~jnp.all(accepted), i <= max_halvings)

    def body(state):
        t, accepted, f_best, i = state
        f_try = objective(theta + expand(t) * direction)
        ok = jnp.isfinite(f_try) & (f_try >= f0 - slack)
        newly = ok & ~accepted
        f_best = jnp.where(newly, f_try, f_best)
        accepted = accepted | ok
        t = jnp.where(accepted, t, 0.5 * t)
        return t, accepted, f_best, i + 1

    t0 = jnp.ones((U,), f0.dtype)
    t, accepted, f_new, _ = jax.lax.while_loop(cond, body, (t0, ~finite, f0, 0))
    t = jnp.where(accepted, t, 0.0)
    f_new = jnp.where(accepted, f_new, f0)
    return theta + expand(t) * direction, f_new
