# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # One model, three ways to fit it: EM, gradient ascent, Bayesian inference
#
# **The question:** does the way the model is fitted change the answer, or only what it costs?
#
# The same HME (tree, gates, experts, log-likelihood) fitted by
#
# * **EM** (`hme.fit_em`): closed-form expert updates and one Newton step per gate per iteration;
# * **gradient-based maximum likelihood** (`hme.fit_gradient`): L-BFGS or Adam (optax) on the same objective in an
#   unconstrained parameterisation, full batch or minibatch;
# * **Bayesian inference** (`hme.BayesianHMERegressor`): NUTS or SVI (numpyro) with the core's likelihood.
#
# Jordan & Jacobs (1994) reported that EM reaches a good fit in tens of passes over the data where gradient
# methods need thousands. We measure it. `HME_NOTEBOOK_SMALL=1` runs a small version (the tests).

# %%
import os
import warnings

import jax
import matplotlib.pyplot as plt
import numpy as np

jax.config.update("jax_enable_x64", True)
import hme  # noqa: E402

SMALL = os.environ.get("HME_NOTEBOOK_SMALL", "0") == "1"
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
n = 1000 if SMALL else 5000

# a depth-2 HME: four linear experts behind three softmax gates
spec = hme.make_spec(2, depth=2)
truth = hme.HMEParams(
    hme.GateParams(np.array([[0.0, 0.5], [0.0, -1.0], [0.0, 1.0]]),
                   np.array([[[0, 0], [3.0, 0]], [[0, 0], [0, 3.0]], [[0, 0], [0, -3.0]]], float)),
    hme.ExpertParams(np.array([[1.0], [-1.0], [2.0], [0.0]]), rng.normal(size=(4, 2, 1)), np.full((4, 1, 1), 0.09)),
)
X = rng.uniform(-2, 2, (n, 2))
pi = np.asarray(hme.gate_path_probs(spec, truth, X))
leaf = (rng.uniform(size=(n, 1)) > np.cumsum(pi, 1)).sum(1).clip(0, 3)
y = np.asarray(hme.leaf_means(spec, truth, X))[np.arange(n), leaf, 0] + 0.3 * rng.normal(size=n)

# %% [markdown]
# ## Log-likelihood against passes over the data, from one common start
#
# A pass is one EM iteration, or one evaluation of the objective and its gradient (L-BFGS's line-search steps
# included; Adam on minibatches: one epoch of minibatch gradients plus one full evaluation).

# %%
p0 = jax.device_get(hme.fit_em(spec, X, y, n_init=1, random_state=1, max_iter=1).params)
fits = {
    "EM": hme.fit_em(spec, X, y, start_params=p0, max_iter=2000, tol=1e-8),
    "L-BFGS": hme.fit_gradient(spec, X, y, start_params=p0, max_iter=2000, tol=1e-8),
    "Adam (lr 0.01)": hme.fit_gradient(
        spec, X, y, start_params=p0, optimizer="adam", learning_rate=0.01, max_iter=3000, tol=1e-8
    ),
    "Adam, minibatch 128": hme.fit_gradient(
        spec,
        X,
        y,
        start_params=p0,
        optimizer="adam",
        learning_rate=0.01,
        batch_size=128,
        max_iter=100 if SMALL else 300,
        tol=1e-6,
    ),
}
fig, ax = plt.subplots(figsize=(7, 4))
best = max(float(f.objective) for f in fits.values())
for name, f in fits.items():
    h = np.asarray(f.history)
    h = h[np.isfinite(h)]
    per_iter = float(f.n_evaluations) / max(int(f.n_iter), 1)
    passes = np.arange(len(h)) * per_iter + 1
    ax.loglog(passes, np.maximum(best - h, 1e-10), label=f"{name}: {int(f.n_evaluations)} passes")
    print(
        f"{name:22s} log-likelihood {float(f.log_likelihood):10.3f}  passes {int(f.n_evaluations):5d}  converged "
        f"{bool(f.converged)}"
    )
ax.set(xlabel="passes over the data", ylabel="best objective − objective", title="same start, same objective")
ax.legend(fontsize="small")
plt.show()

# %% [markdown]
# EM gets within 1e-6 of its optimum in a few tens of passes; L-BFGS needs several times as many evaluations and
# Adam hundreds to thousands, as Jordan & Jacobs reported. Minibatch Adam makes fast early progress per pass but
# stalls at the noise level of its step size. (`benchmarks/bench_fitting.py` prints the same comparison with wall
# times, and on kin8nm.)
#
# ## Bayesian inference: NUTS and SVI on a depth-1 HME
#
# Priors are weakly informative and scaled by the data (documented in `hme.bayes`); chains start at the EM
# estimate, and draws are relabelled to the canonical leaf order before parameters are summarised.

# %%
Xs, ys = X[:300, :1], y[:300]
nuts = hme.BayesianHMERegressor(depth=1, method="nuts", num_warmup=150 if SMALL else 500,
                                num_samples=150 if SMALL else 500, num_chains=2, random_state=0).fit(Xs, ys)
svi = hme.BayesianHMERegressor(depth=1, method="svi", svi_steps=1000 if SMALL else 3000, random_state=0).fit(Xs, ys)
print(f"NUTS: worst R-hat {nuts.rhat_:.3f}, smallest ESS {nuts.ess_:.0f}, divergences {nuts.divergences_}")
print(nuts.summary().round(3).to_string())

fig, axs = plt.subplots(1, 2, figsize=(12, 4))
order = np.argsort(Xs[:, 0])
for ax, (name, b) in zip(axs, [("NUTS", nuts), ("SVI", svi)], strict=True):
    lo, hi = b.predict_interval(Xs[order], 0.9)
    ax.fill_between(Xs[order, 0], lo, hi, alpha=0.3, label="90% posterior-predictive interval")
    ax.plot(Xs[order, 0], b.predict(Xs[order]), "k", label="posterior-predictive mean")
    ax.scatter(Xs[:, 0], ys, s=6, color="grey")
    ax.set(title=name, xlabel="x0")
    ax.legend(fontsize="small")
plt.show()

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(svi.elbo_)
ax.set(xlabel="SVI step", ylabel="ELBO", title="SVI (low-rank multivariate normal guide)")
plt.show()
