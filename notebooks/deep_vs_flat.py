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
# # Deep vs flat: does a tree of gates pay on real data?
#
# **The question:** at the same number of experts, does routing through a tree of binary gates predict better
# than one flat gate?
#
# A binary HME of depth D and a flat mixture of 2^D experts have the same leaves and, with softmax gates, exactly
# the same number of free parameters. The only difference is the routing: D nested binary decisions against one
# 2^D-way decision. `benchmarks/deep_vs_flat.py` compares them (and the grown tree, the SS/SL/LS/LL gating
# families and four baselines) on 11 regression and 5 classification sets with repeated random splits and paired,
# overlap-corrected confidence intervals; its results are in `docs/deep_vs_flat.csv` and `docs/deep_vs_flat.md`.
#
# This notebook plots those results when the CSV is there (a clone of the repository), and otherwise runs a small
# version of the protocol itself on the data bundled with the package. `HME_NOTEBOOK_SMALL=1` (the tests) always
# runs the small version with two splits.

# %%
import csv
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import hme
from hme.compare import paired_interval, regression_scores, repeated_splits, standardise
from hme.datasets import load_kin8nm, load_mcycle, load_tonedata

SMALL = os.environ.get("HME_NOTEBOOK_SMALL", "0") == "1"
CSV = Path(hme.__file__).resolve().parents[1] / "docs" / "deep_vs_flat.csv"

# %% [markdown]
# ## The results
# Either the benchmark's rows, or the small protocol: depth 2 and 3 against flat 4 and 8 on tonedata, mcycle and a
# 2,000-row subsample of kin8nm (inputs standardised on each training part, `n_init=3` everywhere).

# %%
if CSV.exists() and not SMALL:
    with open(CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    print(f"{len(rows)} rows from docs/{CSV.name}")
else:
    kx, ky = load_kin8nm(np.float64)
    data = {"tonedata": load_tonedata(), "mcycle": load_mcycle(), "kin8nm (2000 rows)": (kx[:2000], ky[:2000])}
    depths = (2,) if SMALL else (2, 3)
    rows = []
    for name, (X, y) in data.items():
        for j, (tr, te) in enumerate(repeated_splits(len(y), 2 if SMALL else 5)):
            Xtr, Xte = standardise(X[tr], X[te])
            for D in depths:
                for label, model in ((f"deep {D}", hme.HMERegressor(depth=D, n_init=3, random_state=j)),
                                     (f"flat {2 ** D}", hme.HMERegressor(depth=1, branching=2**D, n_init=3,
                                                                         random_state=j))):
                    s = regression_scores(model, Xtr, y[tr], Xte, y[te])
                    rows.append({"set": name, "task": "regression", "split": j, "model": label,
                                 "kind": label.split()[0], "n_leaves": 2**D, "n_train": len(tr), "n_test": len(te),
                                 "error": s["mse"], "log_lik": s["log_lik"], "coverage": s["coverage"],
                                 "seconds": s["seconds"]})
    print(f"{len(rows)} rows from the small protocol")

# %% [markdown]
# ## Held-out error against the number of leaves
# One panel per data set: the mean held-out MSE (accuracy for classification) over the splits, for the deep trees
# (2^D leaves) and the flat mixtures with the same leaves. Where the two lines lie on each other, depth buys
# nothing that a wider flat gate does not.

# %%
sets = list(dict.fromkeys(r["set"] for r in rows))
cols = min(4, len(sets))
fig, axes = plt.subplots(-(-len(sets) // cols), cols, figsize=(3.2 * cols, 2.6 * -(-len(sets) // cols)),
                         squeeze=False)
for ax, name in zip(axes.flat, sets, strict=False):
    for kind, style in (("deep", "o-"), ("flat", "s--")):
        pts = {}
        for r in rows:
            if r["set"] == name and r["kind"] == kind:
                pts.setdefault(int(r["n_leaves"]), []).append(float(r["error"]))
        if pts:
            leaves = sorted(pts)
            ax.plot(leaves, [np.mean(pts[k]) for k in leaves], style, label=kind)
    task = next(r["task"] for r in rows if r["set"] == name)
    ax.set(title=name, xscale="log", xlabel="leaves", ylabel="MSE" if task == "regression" else "accuracy")
    ax.set_xticks([2, 4, 8, 16], ["2", "4", "8", "16"])
for ax in list(axes.flat)[len(sets):]:
    ax.axis("off")
axes.flat[0].legend()
fig.tight_layout()

# %% [markdown]
# ## Paired differences of the predictive log-density
# Deep minus flat at the same leaves, nats per test row, with the 95% corrected resampled t interval (Nadeau &
# Bengio 2003: random splits overlap, so the naive interval is too narrow). Right of zero: the tree's predictive
# distribution is better.

# %%
labels, means, los, his = [], [], [], []
for name in sets:
    for D in (2, 3, 4):
        deep = {r["split"]: float(r["log_lik"]) for r in rows if r["set"] == name and r["model"] == f"deep {D}"}
        flat = {r["split"]: float(r["log_lik"]) for r in rows if r["set"] == name and r["model"] == f"flat {2 ** D}"}
        common = sorted(set(deep) & set(flat))
        if not common:
            continue
        first = next(r for r in rows if r["set"] == name)
        m, lo, hi = paired_interval([deep[s] - flat[s] for s in common], int(first["n_train"]), int(first["n_test"]))
        labels.append(f"{name}, D={D}")
        means.append(m)
        los.append(lo)
        his.append(hi)
fig, ax = plt.subplots(figsize=(6, 0.28 * len(labels) + 1))
pos = np.arange(len(labels))
m, lo, hi = (np.array(a) for a in (means, los, his))
finite = np.isfinite(lo) & np.isfinite(hi)
ax.errorbar(m[finite], pos[finite], xerr=[m[finite] - lo[finite], hi[finite] - m[finite]], fmt="o", capsize=2)
ax.plot(m[~finite], pos[~finite], "o")
ax.axvline(0, color="k", lw=0.8)
ax.set_yticks(pos, labels)
ax.set_xlabel("Δ log-lik per test row (deep − flat)")
ax.set_xlim(np.nanpercentile(np.r_[lo[finite], m], 2) - 0.05, np.nanpercentile(np.r_[hi[finite], m], 98) + 0.05)
fig.tight_layout()
