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
from ._linear import linear_predictor


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


def penalty(spec, experts, alpha):
    return 0.5 * alpha * jnp.sum(experts.coef**2)


def m_step(spec, experts, design, y, leaf_w, aux, leaf_gram, opts, solver="newton"):
    q = design.shape[1]
    L = leaf_w.shape[1]
    C = y.shape[1]
    pen = jnp.full((q,), opts.alpha, design.dtype).at[0].set(0.0)
    targets = leaf_w[:, :, None] * y[:, None, :]
    totals = leaf_w * jnp.sum(y, 1)[:, None]
    mask = np.ones((L, C), bool)
    th = logit_m_step(design, _theta(experts), aux, targets, totals, mask, pen, solver, leaf_gram)
    th = th[:, 1:, :].transpose(0, 2, 1)  # (L, q, C-1)
    return ExpertParams(th[:, 0, :], th[:, 1:, :], None)
