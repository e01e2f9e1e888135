"""Random specs and parameters for tests."""

import jax
import jax.numpy as jnp
import numpy as np

import hme


def random_params(spec, rng, dtype=None, gate_scale=1.0):
    if dtype is None:
        dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    t = spec.tree
    k = spec.n_expert_outputs
    mask = t.child_mask
    bias = rng.normal(size=(t.n_gates, t.max_branching)) * gate_scale
    weight = rng.normal(size=(t.n_gates, t.max_branching, spec.n_gate_features)) * gate_scale
    if spec.gate == "softmax":
        bias[:, 0] = 0.0
        weight[:, 0] = 0.0
    else:
        bias[:, 0] = 0.0
    bias = np.where(mask, bias, 0.0)
    weight = np.where(mask[..., None], weight, 0.0)
    intercept = rng.normal(size=(t.n_leaves, k))
    coef = rng.normal(size=(t.n_leaves, spec.n_expert_features, k)) * 0.5
    cov = None
    if spec.expert == "gaussian":
        m = spec.n_targets
        A = rng.normal(size=(t.n_leaves, m, m)) * 0.3
        cov = A @ np.swapaxes(A, 1, 2) + np.eye(m) * rng.uniform(0.2, 1.0, size=(t.n_leaves, 1, 1))
    as_ = lambda a: None if a is None else jnp.asarray(a, dtype)
    return hme.HMEParams(hme.GateParams(as_(bias), as_(weight)), hme.ExpertParams(as_(intercept), as_(coef), as_(cov)))


def random_targets(spec, rng, n, X=None):
    if spec.expert == "gaussian":
        return rng.normal(size=(n, spec.n_targets))
    if spec.expert == "categorical":
        return rng.integers(0, spec.n_targets, size=n)
    return rng.poisson(2.0, size=(n, spec.n_targets)).astype(float)


def one_hot(y, C):
    return np.eye(C)[np.asarray(y)]
