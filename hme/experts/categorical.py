r"""Categorical (multinomial logit) experts; Bernoulli is the two-class case.

Leaf l predicts ``p(y = c | x) = softmax_c(θ_{l,c}·[1, x])`` with class 0 the reference (``θ_{l,0} = 0``).
``y`` is one-hot (soft labels allowed), shape (n, C). The M-step is the weighted soft-target multinomial
logit of :mod:`hme._logit` with case weights = leaf posteriors × sample weights.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._logit import logit_m_step, masked_log_softmax
from ..params import ExpertParams
from ._linear import linear_predictor, ridge_columns, slope_deviation


def _theta(experts):
    th = jnp.concatenate([experts.intercept[:, None, :], experts.coef], axis=1)  # (L, q, C-1)
    th = th.transpose(0, 2, 1)  # (L, C-1, q)
    return jnp.concatenate([jnp.zeros_like(th[:, :1]), th], axis=1)  # (L, C, q)


def _log_probs(experts, design):
    eta = linear_predictor(experts, design)  # (n, L, C-1)
    eta = jnp.concatenate([jnp.zeros_like(eta[..., :1]), eta], -1)
    return masked_log_softmax(eta, np.ones(eta.shape[-1:], bool))


def log_prob(spec, experts, design, y):
    logp = _log_probs(experts, design)
    return jnp.einsum("nlc,nc->nl", logp, y), logp


def mean(spec, experts, design):
    return jnp.exp(_log_probs(experts, design))


def log_mean(spec, experts, design):
    """Per-leaf log class probabilities log p_l(y = c | x), (n, L, C)."""
    return _log_probs(experts, design)


def penalty(spec, experts, alpha, target=None):
    dev = slope_deviation(experts.coef, target)  # (L, p, C-1)
    return 0.5 * jnp.einsum("lpc,p->", dev**2, ridge_columns(alpha, dev.shape[1] + 1, dev.dtype)[1:])


def m_step(spec, experts, design, y, leaf_w, aux, leaf_gram, opts, solver="newton"):
    q = design.shape[1]
    L = leaf_w.shape[1]
    C = y.shape[1]
    pen = ridge_columns(opts.alpha, q, design.dtype)
    targets = leaf_w[:, :, None] * y[:, None, :]
    totals = leaf_w * jnp.sum(y, 1)[:, None]
    mask = np.ones((L, C), bool)
    centre = None
    if opts.coef_target is not None:  # (p, C-1) slopes -> (1, C, q) with the reference class and intercept 0
        t = jnp.asarray(opts.coef_target, design.dtype).T  # (C-1, p)
        t = jnp.concatenate([jnp.zeros((C - 1, 1), design.dtype), t], 1)
        centre = jnp.concatenate([jnp.zeros((1, q), design.dtype), t], 0)[None]
    th = logit_m_step(design, _theta(experts), aux, targets, totals, mask, pen, solver, leaf_gram, center=centre)
    th = th[:, 1:, :].transpose(0, 2, 1)  # (L, q, C-1)
    return ExpertParams(th[:, 0, :], th[:, 1:, :], None)
