r"""The predictive distribution of a regression HME: the mixture ``p(y | x) = Σ_l π_l(x) p_l(y | x)``.

NumPy on the host, float64. ``pi`` (n, L) are the gate path probabilities, ``mu`` (n, L, m) the leaves' means
(from :func:`hme.model.gate_path_probs` and :func:`hme.model.leaf_means`), ``experts`` the fitted expert
parameters (:class:`hme.params.ExpertParams`, NumPy); each expert family supplies its
leaves' variances, the mixture's quantiles and draws. Moments:

.. math::  E[y] = Σ_l π_l μ_l, \qquad Var[y] = Σ_l π_l (σ_l² + μ_l²) - E[y]².
"""

from __future__ import annotations

import numpy as np

from .spec import ModelSpec


def _family(spec: ModelSpec):
    fam = spec.expert_family
    if fam.task != "regression":
        raise ValueError(f"{spec.expert!r} experts have no predictive distribution over y (use class probabilities)")
    return fam


def mixture_std(spec: ModelSpec, experts, pi: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Standard deviation of the predictive mixture per output, (n, m)."""
    var = _family(spec).leaf_variance(experts, mu)
    second = np.einsum("nl,nlk->nk", pi, var + mu**2)
    mean = np.einsum("nl,nlk->nk", pi, mu)
    return np.sqrt(np.maximum(second - mean**2, 0.0))


def mixture_quantiles(spec: ModelSpec, experts, pi: np.ndarray, mu: np.ndarray, q) -> np.ndarray:
    """Quantiles of the predictive mixture per output, (n, m, len(q)); levels strictly inside (0, 1)."""
    q = np.atleast_1d(np.asarray(q, np.float64))
    if np.any((q <= 0) | (q >= 1)):
        raise ValueError("quantile levels must lie strictly between 0 and 1")
    return _family(spec).mixture_quantiles(experts, pi, mu, q)


def mixture_sample(spec: ModelSpec, experts, pi: np.ndarray, mu: np.ndarray, n_samples: int, rng) -> np.ndarray:
    """Draws from the predictive mixture, (n, m, n_samples): a leaf by its path probability, then y from it."""
    fam = _family(spec)
    n, L, _ = mu.shape
    cum = np.cumsum(pi, 1)
    u = rng.uniform(size=(n, n_samples))
    leaf = np.minimum((u[:, :, None] > cum[:, None, :]).sum(-1), L - 1)  # (n, S)
    means = np.take_along_axis(mu, leaf[:, :, None], axis=1)  # (n, S, m)
    return fam.sample(experts, means, leaf, rng).transpose(0, 2, 1)
