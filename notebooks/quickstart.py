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
# # Quickstart: hierarchical mixtures of experts with `hme`
#
# **The question:** how do you fit an HME to your data, read what it found, and check that it is right?
#
# A fitted HME is a *soft decision tree*: gates at the branch points split the input space softly and linear
# experts answer at the leaves. This notebook fits three data sets that ship with the package:
#
# 1. **tonedata** (150 points): two crossing lines, the textbook two-expert problem;
# 2. **mcycle** (133 points): a heteroscedastic curve with several regimes, where the predictive *distribution*
#    matters more than its mean;
# 3. **kin8nm** (8192 points, 8 inputs): a non-linear regression where depth buys accuracy.
#
# Set the environment variable `HME_NOTEBOOK_SMALL=1` for a quick run (the tests do): fewer restarts and a
# subsample of kin8nm.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import train_test_split

import hme
from hme import HMERegressor, HMESelector, datasets
from hme import plot as hplot
from hme.demo import relative_error

SMALL = os.environ.get("HME_NOTEBOOK_SMALL", "0") == "1"
N_INIT = 2 if SMALL else 10
print("hme", hme.__version__, "| small mode" if SMALL else "| full mode")

# %% [markdown]
# ## 1. tonedata: two crossing lines
#
# One gate and two linear experts (`depth=1`). The estimator runs `n_init` EM restarts (vectorized, compiled
# once) and keeps the best; `converged_`, `n_iter_` and the trace of every restart are kept. Each restart starts
# from the best of `n_candidates` random starts after 10 short EM iterations each (emEM screening), so on a
# small, clean problem like this one the full EM run has little left to do: `n_iter_` counts its iterations only.

# %%
X_tone, y_tone = datasets.load_tonedata()
tone = HMERegressor(depth=1, n_init=N_INIT, random_state=0).fit(X_tone, y_tone)
print(f"log-likelihood {tone.log_likelihood_:.3f}, converged {tone.converged_} after {tone.n_iter_} EM "
      "iteration(s) from the screened start")
print("expert intercepts", tone.expert_intercept_.round(3), "slopes", tone.expert_coef_[:, 0].round(3))
print("expert standard deviations", np.sqrt(tone.expert_var_).round(4))

# %% [markdown]
# The gate probabilities against the input and the two fitted lines. With the gate on the same input the
# mixing weights vary with the stretch ratio; the lines themselves cross near 1.9.

# %%
axes = hplot.gates_and_experts(tone, X_tone)
axes[1].scatter(X_tone[:, 0], y_tone, s=8, color="grey", alpha=0.6)
plt.show()

# %% [markdown]
# Coefficients with standard errors from the observed information (the Hessian of the marginal
# log-likelihood, computed by JAX); leaves are in a canonical order, so refits print the same table.

# %%
table = tone.summary(X_tone, y_tone)  # a pandas DataFrame; model-level numbers are in table.attrs
print(f"log-likelihood {table.attrs['log_likelihood']:.2f}, AIC {table.attrs['aic']:.2f}, BIC {table.attrs['bic']:.2f}")
table.round(4)

# %% [markdown]
# ## 2. mcycle: the predictive distribution
#
# A depth-2 tree (four experts). The mixture gives a predictive density at every input, not only a mean:
# `predict_interval` inverts the mixture's CDF, so the interval widens where the regimes disagree or the noise grows.
# Gaussian mixture-of-experts likelihoods are unbounded on data like these (an expert can sit on a few points);
# the variance floor `var_floor` keeps every fit finite and a fit that ends on it is reported with a
# `DegenerateFitWarning`.

# %%
X_mc, y_mc = datasets.load_mcycle()
# The default gate ridge (LogisticRegression's C = 1 on standardised inputs) smooths gates; mcycle's regimes
# change sharply within 133 points, so weaken it (5-fold CV R² at depth 2 on standardised times: 0.35 with the
# default, 0.71 with gate_alpha=0.01; a number is used on the raw scale).
mc = HMERegressor(depth=2, gate_alpha=0.01, n_init=N_INIT, random_state=0, max_iter=500).fit(X_mc, y_mc)
fig, axs = plt.subplots(1, 2, figsize=(12, 4))
hplot.predictive(mc, X_mc, y_mc, coverage=0.9, ax=axs[0])
hplot.traces(mc, ax=axs[1])
plt.show()
lo, hi = mc.predict_interval(X_mc, coverage=0.9)
print(f"in-sample coverage of the 90% interval: {np.mean((y_mc >= lo) & (y_mc <= hi)):.3f}")

# %% [markdown]
# Which tree do the data support? `HMESelector` fits a grid of depths (and branchings, gate families) with
# restarts and picks by BIC, ICL or cross-validated log-likelihood, keeping the whole table.

# %%
sel = HMESelector(HMERegressor(max_iter=300), depth=(1, 2) if SMALL else (1, 2, 3), branching=(2,),
                  gate=("softmax", "laplace"), criterion="bic", n_init=2 if SMALL else 5, random_state=0)
sel.fit(X_mc, y_mc)
print(sel.table())

# %% [markdown]
# ## 3. kin8nm: depth buys accuracy
#
# Eight joint angles, one distance. A linear model explains little; each level of the tree doubles the number of
# local linear models. We compare held-out relative error (Jordan & Jacobs' measure: test MSE / test variance of
# y, `hme.demo.relative_error`; 1 is no better than predicting the mean) by depth, and draw the
# depth-3 tree with each gate's strongest input and each leaf's share of the data.

# %%
X_k, y_k = datasets.load_kin8nm(dtype=np.float64)
if SMALL:
    X_k, y_k = X_k[:2000], y_k[:2000]
X_tr, X_te, y_tr, y_te = train_test_split(X_k, y_k, test_size=0.25, random_state=0)
errors = {}
for depth in (1, 2, 3):
    est = HMERegressor(depth=depth, n_init=2 if SMALL else 4, random_state=0, max_iter=100 if SMALL else 500, tol=1e-5)
    est.fit(X_tr, y_tr)
    errors[depth] = relative_error(y_te, est.predict(X_te))
    print(f"depth {depth}: {est.n_leaves_} leaves, held-out relative error {errors[depth]:.3f}")

# %%
hplot.tree(est, X_tr)
plt.show()

# %% [markdown]
# ## Where to go next
#
# * `HMEClassifier` for labels (the same tree with multinomial-logit experts).
# * `gate="laplace"` gates by distance to learned keys instead of by hyperplanes.
# * `est.save(path)` / `hme.load(path)`: arrays + JSON metadata with a checksum; no code runs on load.
# * The functional core: `hme.make_spec`, `hme.fit_em`, `hme.log_likelihood`, `hme.posteriors`.
