r"""Gradient-based maximum likelihood on the same model and objective as EM (optax).

The objective is EM's: the penalised mean log-likelihood ``(Σ_t w_t log p(y_t | x_t) - penalty) / Σ_t w_t`` (joint
in (x, y) for Gaussian gates), maximised over an **unconstrained** parameterisation:

* gates: free biases and slopes/keys/means; the entries EM pins (a softmax gate's reference child, a Laplace gate's
  reference bias, absent children) are held at 0 by a fixed mask; Gaussian gates' ``log π = logsoftmax(u)`` and
  ``Γ = L Lᵀ`` with ``L`` lower triangular with a log-diagonal;
* Gaussian experts: ``Σ = diag(var_floor) + L Lᵀ`` (full), ``diag(var_floor + e^u)`` (diag) or
  ``(max var_floor + e^u) I`` (spherical), per leaf or shared: the floor is built in, not clipped.

Optimisers: ``"lbfgs"`` (optax's L-BFGS with a zoom line search; full batch) and ``"adam"`` (full batch, or
minibatches of ``batch_size`` rows reshuffled every epoch, with a Robbins–Monro decay of the learning rate,
``lr · (1 + epochs)^(-0.6)``, so that the minibatch noise dies out and the iterates settle at the full-batch
optimum instead of hovering around it). The stopping rule is EM's: stop when the relative change
of the objective between iterations (full batch) or epochs (minibatch, evaluated on all the data) is at most
``tol``. Restarts are vmapped and the result is an :class:`hme.EMResult`, so the estimators and every downstream
tool treat both fits alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import gates as _gates
from . import monitor as _monitor
from .aot import exported_jit
from .em import DEFAULT_N_CANDIDATES, exportable, fit_compiler_options, starting_points
from .fitting import (
    DEFAULT_ALPHA,
    DEFAULT_GATE_ALPHA,
    EMResult,
    FitData,
    FitOptions,
    Trace,
    batch_objective,
    best_of,
    center_inputs,
    check_n_candidates,
    e_step,
    iterate,
    prepare_fit,
)
from .params import ExpertParams, HMEParams
from .sharding import accepts_mesh
from .spec import ModelSpec

OPTIMIZERS = ("lbfgs", "adam")


@dataclass(frozen=True)
class GradientConfig:
    """Static choices of a gradient fit (changing them recompiles)."""

    optimizer: str = "lbfgs"
    max_iter: int = 1000
    n_init: int = 1
    init: str = "random"
    batch_size: int | None = None
    learning_rate: float | None = None
    user_init: bool = False
    #: one more restart from ``start_params`` beside the screened default starts (as in :class:`hme.em.FitConfig`)
    extra_start: bool = False
    gate_solver: str = "newton"  # used by the initialisation only
    expert_solver: str = "newton"
    #: report every iteration to :mod:`hme.monitor` (progress, Ctrl-C) through a host callback
    monitor: bool = False
    #: emEM screening of the starts (as in :class:`hme.em.FitConfig`)
    n_candidates: int = 1


# -- unconstrained parameterisation ---------------------------------------------------------------------


def to_unconstrained(spec: ModelSpec, params: HMEParams, opts: FitOptions) -> dict:
    """Parameters -> a dict of unconstrained arrays (covariances as log-Cholesky factors above their floors)."""
    g, e = params
    u = {"gate_bias": g.bias, "gate_weight": g.weight, "intercept": e.intercept, "coef": e.coef}
    u.update(_gates.extra_unconstrained(spec, g))
    u.update(spec.expert_family.extra_unconstrained(spec, e, opts.var_floor))
    return u


def from_unconstrained(spec: ModelSpec, u: dict, opts: FitOptions) -> HMEParams:
    """The inverse of :func:`to_unconstrained`; reference entries are fixed at 0."""
    fam = spec.expert_family
    cov = fam.constrained_cov(spec, u, opts.var_floor)
    df = fam.constrained_df(spec, u, u["intercept"].dtype)
    coef = u["coef"]
    if spec.shared_rows:  # fixed effects: every leaf reads leaf 0's shared rows (the others' get no gradient)
        rows = jnp.asarray(spec.shared_rows) - 1
        coef = coef.at[:, rows, :].set(jnp.broadcast_to(coef[0, rows, :], coef[:, rows, :].shape))
    return HMEParams(_gates.constrain(spec, u), ExpertParams(u["intercept"], coef, cov, df))


# -- objective and optimisation loop ---------------------------------------------------------------------


#: minibatch Adam's Robbins–Monro decay: step k (of n_b per epoch) uses ``lr · (1 + k / n_b)^(-RM_EXPONENT)``;
#: an exponent in (1/2, 1] makes Σ lr_k infinite and Σ lr_k² finite, so the minibatch noise dies out
RM_EXPONENT = 0.6


def _optimizer(cfg: GradientConfig, n_batches: int = 1):
    if cfg.optimizer == "lbfgs":
        return optax.lbfgs(learning_rate=cfg.learning_rate)
    lr = 1e-2 if cfg.learning_rate is None else cfg.learning_rate
    if cfg.batch_size is None:
        return optax.adam(lr)
    return optax.adam(lambda k: lr * (1.0 + k / n_batches) ** (-RM_EXPONENT))


def run_gradient(
    spec: ModelSpec, cfg: GradientConfig, params: HMEParams, data: FitData, opts: FitOptions, key
) -> Trace:
    """The compiled optimisation loop from one start (the analogue of :func:`hme.em.run_em`)."""
    dtype = data.y.dtype
    total = jnp.sum(data.weight)
    n = data.y.shape[0]
    opt = _optimizer(cfg, 1 if cfg.batch_size is None else -(-n // int(cfg.batch_size)))

    def full_loss(u):
        p = from_unconstrained(spec, u, opts)
        return -batch_objective(spec, p, data.design, data.y, data.weight, total, opts)

    u0 = to_unconstrained(spec, params, opts)
    if cfg.batch_size is None:
        value_and_grad = (
            optax.value_and_grad_from_state(full_loss) if cfg.optimizer == "lbfgs" else jax.value_and_grad(full_loss)
        )

        def step(u, state, _key):
            if cfg.optimizer == "lbfgs":
                value, grad = value_and_grad(u, state=state)
                updates, state = opt.update(grad, state, u, value=value, grad=grad, value_fn=full_loss)
                evals = optax.tree_utils.tree_get(state, "num_linesearch_steps")
            else:
                value, grad = value_and_grad(u)
                updates, state = opt.update(grad, state, u)
                evals = 1
            return optax.apply_updates(u, updates), state, -value, evals
    else:
        bs = int(cfg.batch_size)
        n_batches = -(-n // bs)
        pad = n_batches * bs - n
        Xg, Xe = data.design.gate, data.design.expert

        def padrows(a):
            return jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)) if pad else a

        Xg, Xe, Y, W = padrows(Xg), padrows(Xe), padrows(data.y), padrows(data.weight)

        def batch_loss(u, idx):
            p = from_unconstrained(spec, u, opts)
            design = type(data.design)(Xe[idx], Xg[idx])
            return -batch_objective(spec, p, design, Y[idx], W[idx], total, opts)

        def step(u, state, key):  # one epoch of minibatches, then the objective on all the data
            perm = jax.random.permutation(key, n_batches * bs).reshape(n_batches, bs)

            def one(carry, idx):
                u, state = carry
                grad = jax.grad(batch_loss)(u, idx)
                updates, state = opt.update(grad, state, u)
                return (optax.apply_updates(u, updates), state), None

            value = full_loss(u)
            (u, state), _ = jax.lax.scan(one, (u, state), perm)
            return u, state, -value, 2  # one epoch of minibatch gradients and one full evaluation

    def iteration(carry):
        u, state, key = carry
        key, sub = jax.random.split(key)
        new_u, new_state, obj, evals = step(u, state, sub)
        return (new_u, new_state, key), obj, (), evals

    r = iterate(iteration, (u0, opt.init(u0), key), lambda c: c[0], (), max_iter=cfg.max_iter, tol=opts.tol,
                dtype=dtype, report=cfg.monitor)
    p = from_unconstrained(spec, r.params, opts)
    st = e_step(spec, p, data, opts)
    return Trace(params=p, objective=st.objective, mean_log_likelihood=st.mean_log_likelihood, history=r.history,
                 n_iter=r.n_iter, converged=r.converged, failed=r.failed, n_eval=r.n_evaluations)


@exported_jit(static_argnames=("spec", "cfg"), eligible=exportable, options=fit_compiler_options)
def _fit_gradient(spec, cfg, X, y, w, keys, opts, start_params):
    data, x_mean = center_inputs(spec, X, y, w)
    starts = starting_points(spec, cfg, data, x_mean, keys, opts, start_params)
    if cfg.extra_start:  # restart 0 runs from start_params with the key it would have alone
        keys = jnp.concatenate([keys[:1], keys])
    run_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    traces = jax.vmap(lambda p, k: run_gradient(spec, cfg, p, data, opts, k))(starts, run_keys)
    return best_of(spec, traces, data, opts, x_mean)


@accepts_mesh
def fit_gradient(
    spec: ModelSpec,
    X,
    y,
    *,
    sample_weight=None,
    optimizer: str = "lbfgs",
    learning_rate: float | None = None,
    batch_size: int | None = None,
    init_params: str = "random",
    start_params: HMEParams | None = None,
    extra_start: HMEParams | None = None,
    n_init: int = 1,
    n_candidates: int = DEFAULT_N_CANDIDATES,
    random_state=0,
    max_iter: int = 1000,
    tol: float = 1e-9,
    alpha: float = DEFAULT_ALPHA,
    gate_alpha: float = DEFAULT_GATE_ALPHA,
    var_floor=None,
    coef_target=None,
    coef_scale=None,
    verbose: int = 0,
    interruptible: bool = True,
) -> EMResult:
    r"""Fit an HME by gradient-based maximum likelihood (same model, objective and starts as :func:`hme.fit_em`).

    optimizer : "lbfgs" (full batch, line search; ``learning_rate`` None) or "adam" (``learning_rate``
        default 1e-2; full batch or minibatches of ``batch_size`` rows)
    max_iter : iterations (full batch) or epochs (minibatch); ``tol`` : EM's relative-change rule (default 1e-9:
        gradient steps change the objective less per step than EM's, so the rule needs a tighter tolerance)
    Everything else, ``mesh`` (rows over several devices, :mod:`hme.sharding`), ``verbose`` (progress bar) and
    ``interruptible`` (Ctrl-C stops the compiled loop within one iteration) included, as in :func:`hme.fit_em`.
    Returns an :class:`hme.EMResult` (``history``: the objective per
    iteration or epoch).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if batch_size is not None:
        if optimizer != "adam":
            raise ValueError("minibatches need optimizer='adam' (L-BFGS's line search needs the full objective)")
        if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if learning_rate is not None and not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if start_params is not None and extra_start is not None:
        raise ValueError("give start_params (every restart starts there) or extra_start (one more restart), not both")
    p = prepare_fit(spec, X, y, sample_weight=sample_weight, init_params=init_params,
                    start_params=start_params if extra_start is None else extra_start, n_init=n_init,
                    random_state=random_state, max_iter=max_iter, tol=tol, alpha=alpha,
                    gate_alpha=gate_alpha, var_floor=var_floor, coef_target=coef_target, coef_scale=coef_scale)
    monitored = _monitor.wanted(spec, p.X.shape[0], verbose, interruptible)
    cfg = GradientConfig(optimizer=optimizer, max_iter=int(max_iter), n_init=int(n_init), init=init_params,
                         batch_size=None if batch_size is None else int(batch_size), learning_rate=learning_rate,
                         user_init=start_params is not None, extra_start=extra_start is not None, monitor=monitored,
                         n_candidates=check_n_candidates(n_candidates))
    return _monitor.launch(lambda: _fit_gradient(spec, cfg, p.X, p.y, p.weight, p.keys, p.opts, p.start_params),
                           monitored, max_iter, verbose, optimizer, n_init + (extra_start is not None))
