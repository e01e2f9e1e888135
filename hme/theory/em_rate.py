r"""EM's own convergence rate (Jordan & Xu 1995; docs/theory.md §3.6).

Near a strict local maximum θ̂ one EM step is a contraction ``θ_{k+1} - θ̂ ≈ J (θ_k - θ̂)`` with ``J = ∂M/∂θ (θ̂)``
the Jacobian of the EM map M, so ``‖θ_k - θ̂‖`` decays like ``ρ^k`` with ``ρ`` the spectral radius of J. Two
estimates side by side:

* **iterates** -- the slope of ``log ‖θ_k - θ̂‖`` against k over the linear phase (errors between 1e-2 and 1e-9
  of the start's), exponentiated;
* **Jacobian** -- ``max |eig J|`` with J from forward-mode autodiff of the compiled EM step at θ̂.

The core's M-step takes one (modified) Newton step per gate (a generalized EM), so M is that map; both estimates
describe the same algorithm. Coordinates pinned by the parameterisation (reference children), which the step
passes through unchanged, are removed before the eigenvalues are taken.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..em import FitConfig, em_step
from ..fitting import FitData, FitOptions
from ..model import make_design
from ..spec import ModelSpec


def em_rate(spec: ModelSpec, X, y, start, n_steps: int = 400, gate_alpha: float = 1e-8) -> dict:
    """Both estimates of EM's linear rate for data (X, y) from the start ``start`` (float64).

    Returns ``{"rho_iterates", "rho_jacobian", "errors" (‖θ_k - θ̂‖ per step), "window" (steps used),
    "eigenvalues" (largest five moduli)}``.
    """
    with jax.enable_x64(True):
        X = jnp.asarray(X, jnp.float64)
        y = jnp.asarray(y, jnp.float64).reshape(X.shape[0], -1)
        data = FitData(make_design(spec, X), y, jnp.ones(X.shape[0]))
        opts = FitOptions(tol=jnp.asarray(0.0), alpha=jnp.asarray(0.0), gate_alpha=jnp.asarray(gate_alpha),
                          var_floor=jnp.asarray([1e-8]))
        cfg = FitConfig(max_iter=1, n_init=1, user_init=True)
        start = jax.tree_util.tree_map(lambda a: None if a is None else jnp.asarray(a, jnp.float64), start)
        flat0, unravel = ravel_pytree(start)

        @jax.jit
        def step(v):
            return ravel_pytree(em_step(spec, cfg, unravel(v), data, opts)[1])[0]

        @jax.jit
        def run(v):
            def body(v, _):
                nv = step(v)
                return nv, nv

            return jax.lax.scan(body, v, None, length=n_steps)

        last, path = run(flat0)
        fixed, _ = run(last)  # n_steps more: θ̂ to (near) machine precision
        fixed, _ = run(fixed)
        path = np.asarray(jnp.concatenate([flat0[None], path]))
        fixed = np.asarray(fixed)
        errors = np.linalg.norm(path - fixed[None], axis=1)
        J = np.asarray(jax.jacfwd(step)(jnp.asarray(fixed)))
    e0 = errors[0]
    window = np.flatnonzero((errors < 1e-2 * e0) & (errors > 1e-9 * e0))
    rho_it = np.nan
    if len(window) >= 5:
        slope = np.polyfit(window, np.log(errors[window]), 1)[0]
        rho_it = float(np.exp(slope))
    # coordinates the M-step passes through unchanged (pinned reference children) have J[i] = e_i: J is block
    # triangular, their eigenvalue 1 belongs to no motion of EM, the rest is the spectrum of the free block
    eye = np.eye(J.shape[0])
    frozen = np.all(np.isclose(J, eye, atol=1e-12), axis=1)
    keep = ~frozen
    eig = np.sort(np.abs(np.linalg.eigvals(J[np.ix_(keep, keep)])))[::-1]
    return {
        "rho_iterates": rho_it,
        "rho_jacobian": float(eig[0]),
        "errors": errors.tolist(),
        "window": [int(window[0]), int(window[-1])] if len(window) else [],
        "eigenvalues": eig[:5].tolist(),
        "frozen": int(frozen.sum()),
    }


def compare_gates(n: int = 2000, seed: int = 0) -> list[dict]:
    """EM's rate for a softmax-gated (S3 truth) and a Laplace-gated (FuseMoE truth) two-expert model."""
    from ..tree import TreeSpec
    from . import truths as T
    from .experiments import flat_start

    out = []
    rng = np.random.default_rng(seed)
    for truth in (T.softmax_s3(), T.laplace_fusemoe()):
        X, y = truth.sample(n, rng)
        spec = ModelSpec(tree=TreeSpec.complete(1, 2), n_features=1, gate=truth.gate)
        start = flat_start(truth, 2, n, rng)
        # move the start away from the truth so the linear phase is long enough to measure
        start = jax.tree_util.tree_map(lambda a: None if a is None else np.asarray(a), start)
        start = start._replace(experts=start.experts._replace(intercept=start.experts.intercept + 0.3))
        res = em_rate(spec, X, y, start)
        res.update(gate=truth.gate, truth=truth.name, n=n)
        out.append(res)
    return out
