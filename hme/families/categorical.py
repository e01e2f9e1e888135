r"""Categorical (multinomial logit) experts; Bernoulli is the two-class case.

Leaf l predicts ``p(y = c | x) = softmax_c(θ_{l,c}·[1, x])`` with class 0 the reference (``θ_{l,0} = 0``).
``y`` is one-hot (soft labels allowed), shape (n, C). The M-step is the weighted soft-target multinomial
logit of :mod:`hme._logit` with case weights = leaf posteriors × sample weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from .._logit import logit_m_step, masked_log_softmax
from ..params import ExpertParams
from . import register_expert
from .base import ExpertFamily
from .linear import linear_predictor, newton_maximise, ridge_columns


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


class CategoricalExpert(ExpertFamily):
    name = "categorical"
    task = "classification"
    min_targets = 2

    def n_outputs(self, n_targets):
        return n_targets - 1  # class 0 is the reference

    def needs_gram(self, solver):
        return solver == "bound"

    def prepare_targets(self, y, n_targets, dtype):
        """(n, C) one-hot labels from integer classes (n,), or soft labels (n, C) as given."""
        if y.ndim == 1:
            return jax.nn.one_hot(y.astype(jnp.int32), n_targets, dtype=dtype)
        return y.astype(dtype)

    def output_label(self, k, j):
        return "" if k == 1 else f" [class {j + 1}]"

    def log_prob(self, spec, experts, design, y):
        return log_prob(spec, experts, design, y)

    def mean(self, spec, experts, design):
        return mean(spec, experts, design)

    def log_mean(self, spec, experts, design):
        return log_mean(spec, experts, design)

    def m_step(self, spec, experts, design, y, leaf_w, aux, leaf_gram, opts, solver="newton"):
        return m_step(spec, experts, design, y, leaf_w, aux, leaf_gram, opts, solver=solver)

    def pooled_fit(self, D, y, w, pen, n_targets):
        """Newton's method with halving on the penalised weighted multinomial log-likelihood (class 0 the
        reference); ``y`` labels (n,) or one-hot/soft (n, C). Returns (q, C - 1)."""
        Y = np.asarray(y)
        C = n_targets
        if Y.ndim == 1:
            Y = np.eye(C)[Y.astype(int)]
        Y = Y.astype(np.float64)
        n, q = D.shape

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

        th = newton_maximise(f, gh, np.zeros((C - 1) * q))
        return th.reshape(C - 1, q).T

    def bayes_likelihood(self, spec, log_pi, eta, experts):
        """A mixture of categoricals is the categorical of the mixed probabilities (class 0: the reference)."""
        import numpyro.distributions as dist

        logits = jnp.concatenate([jnp.zeros(eta.shape[:-1] + (1,), eta.dtype), eta], axis=-1)
        mixed = jax.scipy.special.logsumexp(log_pi[..., None] + jax.nn.log_softmax(logits, axis=-1), axis=1)
        return dist.Categorical(logits=mixed)


CATEGORICAL = register_expert(CategoricalExpert())
