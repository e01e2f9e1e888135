r"""Batched dense linear algebra in plain JAX operations: Cholesky, triangular solves and symmetric eigensystems.

Why not ``jnp.linalg``: on the CPU, jaxlib 0.10.0 to 0.11.0 run a batched LAPACK custom call
(``lapack_*getrf/potrf/trsm/syevd_ffi``) by scheduling chunks of the batch on XLA's intra-op thread pool and then
*blocking a pool thread* until they finish (``ParallelBatchMap`` in ``jaxlib/cpu/lapack_kernels.cc``, introduced
by jax commit bfd9e1fbd3). When one compiled program runs two such calls concurrently, every pool thread can end
up waiting for work queued behind it: the process hangs at 0% CPU (jax-ml/jax#36927). The same kernels call a
threaded OpenBLAS from several pool threads at once, which corrupts its heap on many-core hosts
(jax-ml/jax#39292). Upstream turned the parallel path off for open-source builds on 2026-07-21 (jax commit
859992407d), after the 0.11.0 release. The fitting programs of :mod:`hme` therefore contain no LAPACK or
cuSOLVER custom call at all; ``tests/test_batched_linalg.py`` checks this on their compiled HLO.

Everything here is built from matrix products, gathers and ``lax`` loops, which XLA schedules without blocking
its pool, on any core count and on GPU:

* :func:`cholesky` -- left-looking blocked Cholesky ``A = L Lᵀ`` in blocks of :data:`BLOCK` columns. Each step
  forms one block row of the Schur complement with a GEMM, ``S = A[k, :] - L[k, :] Lᵀ``, factors its diagonal
  block with an unblocked column loop, and fills the block column below with ``Lₖₖ⁻¹ S``. The inverses of the
  diagonal blocks are kept, so a triangular solve is a loop of GEMMs. Pivots are floored at
  ``10 ε max_i A_ii``: a positive semi-definite matrix (an unidentified direction) gives a finite, large step,
  never NaN.
* :func:`matrix_abs` -- ``|A|`` of symmetric matrices from the Newton-Schulz iteration for the matrix sign
  function (the saddle-free Newton step of the Laplace gates needs nothing more).
* :func:`leading_eigenvector` -- power iteration (the k-means start's principal axis).

Shapes follow ``jnp.linalg``: a leading batch of any rank, matrices in the last two axes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

#: Columns per block of the blocked Cholesky. Small enough that the unblocked column loop on a diagonal block is
#: cheap, large enough that the block-row GEMMs dominate the work.
BLOCK = 32
#: Relative pivot floor of :func:`cholesky` (times the largest diagonal entry).
PIVOT_FLOOR = 10.0

_HIGHEST = lax.Precision.HIGHEST


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    # HIGHEST: on GPUs the default float32 matmul may round its inputs to TF32, too coarse for a factorisation.
    return jnp.matmul(a, b, precision=_HIGHEST)


def _t(a: jax.Array) -> jax.Array:
    return jnp.swapaxes(a, -1, -2)


class CholeskyFactor(NamedTuple):
    """A blocked Cholesky factor ``A = L Lᵀ``.

    lower : (..., P, P) lower-triangular ``L`` (zero above the diagonal)
    block_inverses : (..., n_blocks, b, b) inverses of the diagonal blocks ``L_kk`` (``b = min(P, BLOCK)``;
        the last block is padded with an identity when ``b`` does not divide ``P``)
    """

    lower: jax.Array
    block_inverses: jax.Array


def _unblocked_cholesky(a: jax.Array, floor: jax.Array) -> jax.Array:
    """Right-looking column Cholesky of small blocks a: (..., b, b); floor: (...,) smallest pivot.

    A ``fori_loop`` over the columns: its body is compiled once (an unrolled loop multiplies XLA's compile
    time), and each step is a few fused elementwise operations on the block."""
    b = a.shape[-1]
    idx = jnp.arange(b)

    def body(j, carry):
        a, lower = carry
        col = lax.dynamic_index_in_dim(a, j, axis=-1, keepdims=False)  # (..., b)
        pivot = lax.dynamic_index_in_dim(col, j, axis=-1, keepdims=False)
        d = jnp.sqrt(jnp.where(pivot > floor, pivot, floor))  # the comparison also replaces NaN
        below = jnp.where(idx > j, col / d[..., None], 0.0)
        lower = jnp.where(idx == j, jnp.where(idx == j, d[..., None], below)[..., :, None], lower)
        return a - below[..., :, None] * below[..., None, :], lower

    return lax.fori_loop(0, b, body, (a, jnp.zeros_like(a)))[1]


def _unblocked_lower_inverse(lower: jax.Array) -> jax.Array:
    """Inverse of small lower-triangular blocks (..., b, b): column elimination on ``L X = I``."""
    b = lower.shape[-1]
    idx = jnp.arange(b)

    def body(j, carry):
        rest, inv = carry  # rest: right-hand sides still to eliminate (rows ≥ j meaningful)
        col = lax.dynamic_index_in_dim(lower, j, axis=-1, keepdims=False)  # (..., b)
        x = lax.dynamic_index_in_dim(rest, j, axis=-2, keepdims=False) / lax.dynamic_index_in_dim(col, j, axis=-1)
        inv = jnp.where((idx == j)[:, None], x[..., None, :], inv)
        below = jnp.where(idx > j, col, 0.0)
        return rest - below[..., :, None] * x[..., None, :], inv

    eye = jnp.broadcast_to(jnp.eye(b, dtype=lower.dtype), lower.shape)
    return lax.fori_loop(0, b, body, (eye, jnp.zeros_like(lower)))[1]


def _pad_identity(a: jax.Array, size: int) -> jax.Array:
    P = a.shape[-1]
    if size == P:
        return a
    pad = [(0, 0)] * (a.ndim - 2) + [(0, size - P), (0, size - P)]
    extra = jnp.zeros((size, size), a.dtype).at[jnp.arange(P, size), jnp.arange(P, size)].set(1.0)
    return jnp.pad(a, pad) + extra


def cholesky(a: jax.Array) -> CholeskyFactor:
    r"""Blocked Cholesky factor of symmetric positive (semi-)definite matrices ``a``: (..., P, P).

    Symmetric input assumed. Block step k: ``S = A[k, :] - L[k, :] Lᵀ`` (rows of ``L`` not yet computed are
    zero), ``L_kk = chol(S_kk)``, ``L[below, k] = (L_kk⁻¹ S[:, below])ᵀ``. Cost about ``P³`` multiply-adds per matrix
    (three times LAPACK's ``P³/3``: every block row is multiplied by the whole factor so that the loop body has
    static shapes).
    """
    P = a.shape[-1]
    b = min(P, BLOCK)
    n_blocks = -(-P // b)
    size = n_blocks * b
    diag_max = jnp.max(jnp.abs(jnp.diagonal(a, axis1=-2, axis2=-1)), axis=-1)
    floor = PIVOT_FLOOR * jnp.finfo(a.dtype).eps * jnp.where(diag_max > 0, diag_max, 1.0)
    if n_blocks == 1:
        lower = _unblocked_cholesky(a, floor)
        return CholeskyFactor(lower, _unblocked_lower_inverse(lower)[..., None, :, :])
    a = _pad_identity(a, size)
    rows = jnp.arange(size)[:, None]

    def body(k, carry):
        lower, inverses = carry
        r0 = k * b
        s = lax.dynamic_slice_in_dim(a, r0, b, axis=-2) - _mm(
            lax.dynamic_slice_in_dim(lower, r0, b, axis=-2), _t(lower)
        )
        l_kk = _unblocked_cholesky(lax.dynamic_slice_in_dim(s, r0, b, axis=-1), floor)
        inv_kk = _unblocked_lower_inverse(l_kk)
        column = jnp.where(rows >= r0 + b, _t(_mm(inv_kk, s)), 0.0)  # (..., size, b): L[i, block k], i below
        column = lax.dynamic_update_slice_in_dim(column, l_kk, r0, axis=-2)
        lower = lax.dynamic_update_slice_in_dim(lower, column, r0, axis=-1)
        inverses = lax.dynamic_update_slice_in_dim(inverses, inv_kk[..., None, :, :], k, axis=-3)
        return lower, inverses

    batch = a.shape[:-2]
    init = (jnp.zeros_like(a), jnp.zeros(batch + (n_blocks, b, b), a.dtype))
    lower, inverses = lax.fori_loop(0, n_blocks, body, init)
    return CholeskyFactor(lower[..., :P, :P], inverses)


def _blocks_of(factor: CholeskyFactor):
    n_blocks, b = factor.block_inverses.shape[-3], factor.block_inverses.shape[-1]
    return n_blocks, b, n_blocks * b


def solve_lower(factor: CholeskyFactor, rhs: jax.Array, transpose: bool = False) -> jax.Array:
    """Solve ``L X = rhs`` (or ``Lᵀ X = rhs`` with ``transpose``) for rhs: (..., P, k), block by block."""
    P, k = rhs.shape[-2:]
    n_blocks, b, size = _blocks_of(factor)
    if n_blocks == 1:
        inv = factor.block_inverses[..., 0, :, :]
        return _mm(_t(inv) if transpose else inv, rhs)
    lower = _pad_identity(factor.lower, size)
    rhs = jnp.pad(rhs, [(0, 0)] * (rhs.ndim - 2) + [(0, size - P), (0, 0)])
    out0 = jnp.zeros(jnp.broadcast_shapes(lower.shape[:-2], rhs.shape[:-2]) + (size, k), rhs.dtype)

    def body(step, out):
        blk = n_blocks - 1 - step if transpose else step
        r0 = blk * b
        if transpose:  # rows of Lᵀ are columns of L; only solved blocks (below) are non-zero in ``out``
            coupling = _t(lax.dynamic_slice_in_dim(lower, r0, b, axis=-1))
            inv = _t(lax.dynamic_index_in_dim(factor.block_inverses, blk, axis=-3, keepdims=False))
        else:
            coupling = lax.dynamic_slice_in_dim(lower, r0, b, axis=-2)
            inv = lax.dynamic_index_in_dim(factor.block_inverses, blk, axis=-3, keepdims=False)
        local = lax.dynamic_slice_in_dim(rhs, r0, b, axis=-2) - _mm(coupling, out)
        return lax.dynamic_update_slice_in_dim(out, _mm(inv, local), r0, axis=-2)

    return lax.fori_loop(0, n_blocks, body, out0)[..., :P, :]


def cho_solve(factor: CholeskyFactor, rhs: jax.Array) -> jax.Array:
    """Solve ``A X = rhs`` from ``A``'s factor; rhs: (..., P) or (..., P, k)."""
    vec = rhs.ndim == factor.lower.ndim - 1
    b = rhs[..., None] if vec else rhs
    x = solve_lower(factor, solve_lower(factor, b), transpose=True)
    return x[..., 0] if vec else x


def solve_psd(matrix: jax.Array, rhs: jax.Array) -> jax.Array:
    """``matrix⁻¹ rhs`` for symmetric positive (semi-)definite ``matrix`` (..., P, P); rhs (..., P) or (..., P, k)."""
    return cho_solve(cholesky(matrix), rhs)


def inv_psd(matrix: jax.Array) -> jax.Array:
    """Inverse of symmetric positive definite matrices (..., P, P)."""
    eye = jnp.broadcast_to(jnp.eye(matrix.shape[-1], dtype=matrix.dtype), matrix.shape)
    inv = cho_solve(cholesky(matrix), eye)
    return 0.5 * (inv + _t(inv))


def lower_inverse(factor: CholeskyFactor) -> jax.Array:
    """``L⁻¹`` of a factor, (..., P, P): whitening ``z = L⁻¹ r`` makes ``zᵀz = rᵀ A⁻¹ r``."""
    P = factor.lower.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(P, dtype=factor.lower.dtype), factor.lower.shape)
    return solve_lower(factor, eye)


def logdet(factor: CholeskyFactor) -> jax.Array:
    """``log det A = 2 Σ log L_ii``, shape (...)."""
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(factor.lower, axis1=-2, axis2=-1)), axis=-1)


# -- symmetric matrix functions from matrix products --------------------------------------------------


#: Newton-Schulz iterations of :func:`matrix_abs`: a relative eigenvalue δ grows by 1.5 per step until it is
#: O(1), then converges quadratically, so 40 steps resolve every |λ| ≥ 1e-6 ‖A‖_F.
SIGN_ITERATIONS = 40


def matrix_abs(a: jax.Array) -> jax.Array:
    r"""``|A| = V |Λ| Vᵀ`` of symmetric matrices (..., n, n) from matrix products only.

    ``|A| = sign(A) A`` with the matrix sign function from the Newton-Schulz iteration
    ``X ← ½ X (3I - X²)``, ``X₀ = A / ‖A‖_F`` (every eigenvalue of X₀ lies in [-1, 1] and keeps its sign).
    Eigenvalues below about 1e-6 ‖A‖_F come out between 0 and |λ|: add a floor above that level before
    inverting (as the saddle-free Newton step does).
    """
    a = 0.5 * (a + _t(a))
    n = a.shape[-1]
    norm = jnp.sqrt(jnp.sum(a * a, axis=(-2, -1)))
    x0 = a / jnp.where(norm > 0, norm, 1.0)[..., None, None]
    eye = jnp.eye(n, dtype=a.dtype)

    def body(_, x):
        return 0.5 * _mm(x, 3.0 * eye - _mm(x, x))

    sign = lax.fori_loop(0, SIGN_ITERATIONS, body, x0)
    out = _mm(sign, a)
    return 0.5 * (out + _t(out))


def leading_eigenvector(a: jax.Array, iterations: int = 64) -> jax.Array:
    """Eigenvector of the largest eigenvalue of a symmetric positive semi-definite matrix (n, n), by power
    iteration from a fixed, generic start (deterministic; its sign is arbitrary)."""
    n = a.shape[-1]
    v0 = 1.0 + jnp.arange(n, dtype=a.dtype) / n

    def body(_, v):
        w = _mm(a, v[:, None])[:, 0]
        norm = jnp.sqrt(jnp.sum(w * w))
        return jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1.0), v)

    return lax.fori_loop(0, iterations, body, v0 / jnp.sqrt(jnp.sum(v0 * v0)))


def log_cholesky(cov, floor):
    """cov -> lower-triangular raw factor of cov - diag(floor) with a log-diagonal (clamped away from 0)."""
    m = cov.shape[-1]
    eye = jnp.eye(m, dtype=cov.dtype)
    excess = cov - floor[..., None] * eye
    scale = jnp.maximum(jnp.max(floor), jnp.finfo(cov.dtype).tiny)
    excess = 0.5 * (excess + jnp.swapaxes(excess, -1, -2)) + 1e-3 * scale * eye
    L = cholesky(excess).lower
    d = jnp.diagonal(L, axis1=-2, axis2=-1)
    return jnp.tril(L, -1) + jnp.log(d)[..., None] * eye


def from_log_cholesky(raw, floor):
    """The inverse of :func:`log_cholesky`: ``L Lᵀ + diag(floor)`` with ``L``'s diagonal ``exp`` of the raw one."""
    m = raw.shape[-1]
    eye = jnp.eye(m, dtype=raw.dtype)
    L = jnp.tril(raw, -1) + jnp.exp(jnp.diagonal(raw, axis1=-2, axis2=-1))[..., None] * eye
    return L @ jnp.swapaxes(L, -1, -2) + floor[..., None] * eye
