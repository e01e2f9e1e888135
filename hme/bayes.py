r"""Bayesian HMEs with numpyro: the same tree, gates and experts, with priors, fitted by NUTS or SVI.

The likelihood is the core's: gate path probabilities mix the experts' distributions, in a ``MixtureSameFamily``
of ``Normal(a_l + x·b_l, σ_l)`` for Gaussian experts and, for categorical experts, the ``Categorical`` of the mixed
class probabilities (numpyro's mixtures need components with a fixed support; a mixture of categoricals is a
categorical), so ``log p(y | x)`` equals :func:`hme.log_likelihood` and posterior-predictive sampling
works. Inputs are centred internally (an exact reparametrisation); nothing is rescaled.

Default priors (weakly informative and scaled by the data, as rstanarm's autoscaling; :class:`Priors` changes them),
with ``s_y`` the sd of y and ``s_j`` the sd of input j:

* gate biases ``N(0, gate_scale²)``, softmax slopes ``N(0, (gate_scale / s_j)²)``, Laplace keys
  ``N(x̄_j, (key_scale s_j)²)`` (gate_scale = 2.5, key_scale = 1);
* expert intercepts ``N(ȳ, (coef_scale s_y)²)``, slopes ``N(0, (coef_scale s_y / s_j)²)`` (coef_scale = 2.5;
  categorical experts use ``s_y = 1``); noise sd ``σ_l ~ HalfNormal(noise_scale s_y)`` (noise_scale = 1).

Entries the parameterisation pins (reference children) are not sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import code_space, compile_cache
from . import gates as _gates
from .families.linear import linear_predictor
from .model import log_path_from_gates, make_design
from .monitor import FitMonitor, run_in_worker
from .params import ExpertParams, GateParams, HMEParams
from .spec import ModelSpec


@dataclass(frozen=True)
class Priors:
    gate_scale: float = 2.5
    key_scale: float = 1.0
    coef_scale: float = 2.5
    noise_scale: float = 1.0


@dataclass(frozen=True)
class DataScale:
    """Location and scale of the (centred) inputs and of y that the default priors use."""

    x_sd: np.ndarray
    y_mean: float
    y_sd: float


def data_scale(spec: ModelSpec, X, y) -> DataScale:
    X = np.asarray(X, np.float64)
    sd = X.std(axis=0) if X.shape[1] else np.zeros(0)
    sd = np.where(sd > 0, sd, 1.0)
    if spec.expert_family.task == "classification":
        return DataScale(sd, 0.0, 1.0)
    return DataScale(sd, *spec.expert_family.bayes_scale(y))


def _free_gate_entries(spec: ModelSpec):
    bias, weight = _gates.free_masks(spec)
    return np.flatnonzero(bias.ravel()), np.flatnonzero(weight.ravel())


def _weight_site(spec: ModelSpec) -> str:
    """The sample site of the gates' weight rows (one family on every gate, or per-level families)."""
    names = {f.weight_site for f in spec.gate_families}
    return names.pop() if len(names) == 1 else "gate_weight"


def _sample_gates(spec: ModelSpec, gsd, priors: Priors, dtype) -> GateParams:
    """Gates of the conditional families: free biases ``N(0, gate_scale²)`` and weight rows with each gate
    family's prior sd (slopes scale inversely with the inputs, keys directly); pinned entries are 0."""
    import numpyro
    import numpyro.distributions as dist

    t = spec.tree
    G, B, pg = t.n_gates, t.max_branching, spec.n_gate_features
    fb, fw = _free_gate_entries(spec)
    b_free = numpyro.sample("gate_bias", dist.Normal(0.0, priors.gate_scale).expand([len(fb)]).to_event(1))
    bias = jnp.zeros(G * B, dtype).at[fb].set(b_free).reshape(G, B)
    row_family = np.repeat(np.arange(G), B)[fw]
    row_sd = jnp.stack([spec.gate_families[g].weight_prior_sd(gsd, priors) for g in range(G)])[row_family]
    w_free = numpyro.sample(_weight_site(spec), dist.Normal(0.0, jnp.reshape(row_sd, (len(fw), pg))).to_event(2))
    weight = jnp.zeros((G * B, pg), dtype).at[fw].set(w_free).reshape(G, B, pg)
    return GateParams(bias, weight)


def hme_model(spec: ModelSpec, X, y=None, scale: DataScale | None = None, priors: Priors = Priors()):
    """numpyro model of an HME on centred inputs ``X`` (n, p); ``y`` observed (or None to predict)."""
    import numpyro
    import numpyro.distributions as dist

    if spec.shared_coef:
        raise ValueError("Bayesian HMEs do not support shared_coef (fixed effects) yet; fit them by EM")
    t = spec.tree
    pe = spec.n_expert_features
    L, k = t.n_leaves, spec.n_expert_outputs
    dtype = X.dtype
    gsd = jnp.asarray(scale.x_sd if spec.gate_features is None else scale.x_sd[list(spec.gate_features)], dtype)
    esd = jnp.asarray(scale.x_sd if spec.expert_features is None else scale.x_sd[list(spec.expert_features)], dtype)
    design = make_design(spec, X)
    if _gates.models_inputs(spec):  # a density on the inputs (Gaussian gates): its own sites, and log p(x)
        fam_g = spec.gate_families[0]
        gates = fam_g.bayes_gates(spec, gsd, priors, dtype)
        numpyro.factor("x", jnp.sum(fam_g.log_marginal(spec, design.gate, gates)))
    else:
        gates = _sample_gates(spec, gsd, priors, dtype)
    intercept = numpyro.sample(
        "intercept", dist.Normal(scale.y_mean, priors.coef_scale * scale.y_sd).expand([L, k]).to_event(2)
    )
    coef_sd = priors.coef_scale * jnp.atleast_1d(jnp.asarray(scale.y_sd, dtype))[None, :] / esd[:, None]  # (pe, k)
    coef = numpyro.sample("coef", dist.Normal(0.0, jnp.broadcast_to(coef_sd, (L, pe, k))).to_event(3))
    fam = spec.expert_family
    params = HMEParams(gates, ExpertParams(intercept, coef, **fam.bayes_noise(spec, scale, priors)))
    log_pi = log_path_from_gates(spec, _gates.gate_log_probs(spec, design.gate, params.gates))  # (n, L)
    eta = linear_predictor(params.experts, design.expert)  # (n, L, k)
    y_dist = fam.bayes_likelihood(spec, log_pi, eta, params.experts)
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", y_dist, obs=y)


def params_from_sample(spec: ModelSpec, sample: dict) -> HMEParams:
    """One posterior draw (a dict of site values) -> HMEParams on the centred inputs (traceable)."""
    noise = spec.expert_family.noise_from_sites(spec, sample)
    return HMEParams(_gates_from_sites(spec, sample),
                     ExpertParams(jnp.asarray(sample["intercept"]), jnp.asarray(sample["coef"]), **noise))


def _gates_from_sites(spec: ModelSpec, sample: dict) -> GateParams:
    if _gates.models_inputs(spec):
        return spec.gate_families[0].gates_from_sites(spec, sample)
    t = spec.tree
    G, B = t.n_gates, t.max_branching
    fb, fw = _free_gate_entries(spec)
    b = jnp.asarray(sample["gate_bias"])
    bias = jnp.zeros(G * B, b.dtype).at[fb].set(b).reshape(G, B)
    w = jnp.asarray(sample[_weight_site(spec)])
    weight = jnp.zeros((G * B, spec.n_gate_features), w.dtype).at[fw].set(w).reshape(G, B, -1)
    return GateParams(bias, weight)


def posterior_means(spec: ModelSpec, samples: dict, X) -> jax.Array:
    """(draws, n, k): the mixture mean E[y | x] (class probabilities) of every draw in ``samples`` (flat draws)."""
    return _posterior_means(spec, samples, X)


@partial(jax.jit, static_argnums=0)
def _posterior_means(spec, samples, X):
    design = make_design(spec, X)

    def one(sample):
        p = params_from_sample(spec, sample)
        pi = jnp.exp(log_path_from_gates(spec, _gates.gate_log_probs(spec, design.gate, p.gates)))
        mu = spec.expert_family.mean(spec, p.experts, design.expert)
        return jnp.einsum("nl,nlk->nk", pi, mu)

    return jax.lax.map(one, samples)


def sites_from_params(spec: ModelSpec, params: HMEParams) -> dict:
    """The inverse of :func:`params_from_sample`: sample-site values of a parameter set (e.g. an EM fit)."""
    g, e = params
    if _gates.models_inputs(spec):
        out = spec.gate_families[0].gate_sites(spec, g)
    else:
        fb, fw = _free_gate_entries(spec)
        out = {"gate_bias": jnp.asarray(g.bias).ravel()[fb],
               _weight_site(spec): jnp.asarray(g.weight).reshape(-1, spec.n_gate_features)[fw]}
    out.update({"intercept": jnp.asarray(e.intercept), "coef": jnp.asarray(e.coef)})
    out.update(spec.expert_family.noise_sites(spec, e))
    return out


#: Sampler steps (NUTS) and optimiser steps (SVI) per compiled chunk. Between chunks Python regains control: it
#: shows progress and a Ctrl-C stops the run there, with nothing left computing.
NUTS_CHUNK = 25
SVI_CHUNK = 100


def _chunk_result(result):
    """A chunk's (state on the device, outputs fetched to the host)."""
    state, out = result
    return state, jax.device_get(out)


def _run_in_chunks(chunk_fn, state, total: int, chunk: int, monitor: FitMonitor, objective):
    """Call the compiled ``chunk_fn(state, first_step) -> (state, outputs)`` (``chunk`` steps each) until ``total``
    steps are done; return the last state and the outputs of every step, concatenated on the leading axis.

    ``objective(outputs) -> (per-chain values,)`` feeds the progress display."""
    pieces = []
    try:
        for first in range(0, total, chunk):
            # the chunk is dispatched and awaited in a helper thread: a Ctrl-C raises in this thread's wait and
            # takes effect once the chunk has returned, never inside JAX's dispatch
            state, out = run_in_worker(lambda s=state, f=first: _chunk_result(chunk_fn(s, jnp.asarray(f))))
            pieces.append(out)
            value = np.atleast_1d(objective(out))
            monitor(np.full(value.shape, min(first + chunk, total)), value)
    finally:
        monitor.close()
    return state, jax.tree_util.tree_map(lambda *a: np.concatenate(a)[:total], *pieces)


def run_nuts(spec, X, y, scale, priors, start_params, num_warmup, num_samples, num_chains, seed, target_accept=0.9,
             verbose: int = 0):
    """NUTS from ``start_params`` (chains vectorised; numpyro's own warm-up adaptation), run in compiled chunks of
    :data:`NUTS_CHUNK` steps (progress, Ctrl-C). Returns (samples by chain, divergences by chain)."""
    compile_cache.enable_default()
    code_space.ensure_code_space()
    from numpyro.infer import NUTS, init_to_value

    kernel = NUTS(partial(hme_model, spec), target_accept_prob=target_accept,
                  init_strategy=init_to_value(values=sites_from_params(spec, start_params)))
    args = (X, y, scale, priors)
    key = jax.random.PRNGKey(seed)
    state = kernel.init(jax.random.split(key, num_chains) if num_chains > 1 else key, num_warmup, model_args=args,
                        model_kwargs={})
    postprocess = kernel.postprocess_fn(args, {})

    @jax.jit
    def chunk_fn(state, first):
        def step(s, _):
            s = kernel.sample(s, args, {})
            return s, (s.z, s.diverging, s.potential_energy)

        return jax.lax.scan(step, state, None, length=NUTS_CHUNK)

    total = num_warmup + num_samples
    monitor = FitMonitor(total, verbose, label=f"NUTS ({num_chains} chain{'s' if num_chains > 1 else ''})",
                         what="chains")
    _, (z, diverging, _) = _run_in_chunks(chunk_fn, state, total, NUTS_CHUNK, monitor,
                                               lambda out: -np.asarray(out[2])[-1])
    keep = slice(num_warmup, total)
    z = jax.tree_util.tree_map(lambda a: jnp.asarray(a[keep]), z)
    constrain = jax.vmap(postprocess)  # over draws
    if num_chains > 1:
        samples = jax.vmap(constrain, in_axes=1, out_axes=0)(z)  # (draws, chains, ...) -> (chains, draws, ...)
        div = np.asarray(diverging[keep]).T
    else:
        samples = jax.tree_util.tree_map(lambda a: a[None], constrain(z))
        div = np.asarray(diverging[keep])[None]
    return {k: np.asarray(v) for k, v in samples.items()}, div


def run_svi(spec, X, y, scale, priors, start_params, steps, learning_rate, num_samples, seed, rank=None,
            verbose: int = 0):
    """SVI with a low-rank multivariate normal guide initialised at ``start_params``, run in compiled chunks of
    :data:`SVI_CHUNK` steps (progress, Ctrl-C).

    Returns (draws with one leading chain axis, the loss = -ELBO per step)."""
    compile_cache.enable_default()
    code_space.ensure_code_space()
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO, init_to_value
    from numpyro.infer.autoguide import AutoLowRankMultivariateNormal

    model = partial(hme_model, spec)
    guide = AutoLowRankMultivariateNormal(
        model, rank=rank, init_loc_fn=init_to_value(values=sites_from_params(spec, start_params)), init_scale=0.01
    )
    svi = SVI(model, guide, numpyro.optim.Adam(learning_rate), Trace_ELBO())
    key, sub = jax.random.split(jax.random.PRNGKey(seed))
    state = svi.init(key, X, y, scale, priors)

    @jax.jit
    def chunk_fn(state, first):
        def step(s, i):
            new, loss = svi.update(s, X, y, scale, priors)
            keep = i < steps  # the last chunk runs past ``steps``: those updates are dropped
            return jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, s), loss

        return jax.lax.scan(step, state, first + jnp.arange(SVI_CHUNK))

    monitor = FitMonitor(steps, verbose, label="SVI", what="runs")
    state, losses = _run_in_chunks(chunk_fn, state, steps, SVI_CHUNK, monitor, lambda out: -np.asarray(out)[-1])
    draws = guide.sample_posterior(sub, svi.get_params(state), sample_shape=(num_samples,))
    return {k: np.asarray(v)[None] for k, v in draws.items()}, np.asarray(losses)
