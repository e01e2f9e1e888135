"""What the estimators' default ridges cost in log-likelihood on data simulated from the model.

``HMERegressor``'s defaults regularise: ``alpha="auto"`` pulls each expert's slopes towards the pooled linear fit
with the weight of 10 observations measured on the pooled fit's residual variance s², ``½ α ΔB_lᵀ ΔB_l / s²``
(before 2026-12-07: the conjugate ``½ α tr(Σ_l⁻¹ ΔB_lᵀ ΔB_l)``, whose M-step added ``α ΔB_lᵀ ΔB_l`` to the leaf's
residual scatter; its figures are quoted in docs/estimators.md); ``gate_alpha="auto"`` is LogisticRegression's
C = 1 ridge on the softmax gates. This script fits exactly specified models with the defaults, without the expert
ridge, and without any ridge, and reports the log-likelihood gap to the parameters that generated the data (the
MLE is never below them) and how much the fitted noise variances exceed the true ones:

* ``flexmix-K4`` -- the K = 4 softmax-gated model of ``bench_flexmix.py`` (2 inputs), simulated in NumPy;
* ``softmax-d1``, ``softmax-depth2-d3``, ``laplace-d1`` -- random truths of ``hme.simulate.random_truth``.

Every fit: ``max_iter=2000, tol=1e-8``, other parameters at their defaults. Columns: median and worst gap (nats)
over ``--seeds``, and the median over seeds of the fitted/true ratio of the typical noise variance: the geometric
mean of the leaf variances, weighted by the leaves' shares of the data (each model's own), which is what the
log-likelihood sees (its ``-½ log σ²`` term).

    python benchmarks/bench_ridge_cost.py [--seeds 3] [--n 2000,10000] [--big 100000] [--out docs/ridge_cost.md]
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np

RIDGES = {"defaults": {}, "alpha=0": {"alpha": 0}, "alpha=0, gate_alpha=0": {"alpha": 0, "gate_alpha": 0}}


def simulated(name, n, rng):
    """(X, y, truth log-likelihood, typical noise variance) of a random truth of hme.simulate."""
    import hme
    from hme.simulate import random_truth, sample, total_log_likelihood

    gate, depth, d = {"softmax-d1": ("softmax", 1, 1), "softmax-depth2-d3": ("softmax", 2, 3),
                      "laplace-d1": ("laplace", 1, 1)}[name]
    spec = hme.make_spec(d, depth=depth, gate=gate)
    truth = random_truth(spec, rng)
    X, y = sample(spec, truth, n, rng)
    share = np.asarray(hme.gate_path_probs(spec, truth, X), np.float64).mean(0)
    return X, y, total_log_likelihood(spec, truth, X, y), float(np.exp(share @ np.log(truth.experts.cov[:, 0, 0])))


def noise_variance(model, X):
    """The fitted model's typical noise variance: the geometric mean of its leaf variances, weighted by the
    leaves' mean gate probabilities."""
    share = np.asarray(model.predict_leaf_proba(X), np.float64).mean(0)
    return float(np.exp(share @ np.log(np.asarray(model.expert_var_, np.float64))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n", default="2000,10000", help="sample sizes for every model")
    ap.add_argument("--big", default="100000", help="further sample sizes for flexmix-K4 only ('' for none)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    from hme import HMERegressor, simulate

    settings = [("flexmix-K4", int(n)) for n in args.n.split(",") + [b for b in args.big.split(",") if b]]
    settings += [(name, int(n)) for name in ("softmax-d1", "softmax-depth2-d3", "laplace-d1")
                 for n in args.n.split(",")]
    shapes = {"flexmix-K4": dict(depth=1, branching=4), "softmax-d1": dict(depth=1),
              "softmax-depth2-d3": dict(depth=2), "laplace-d1": dict(depth=1, gate="laplace")}
    rows = []
    t0 = time.perf_counter()
    for name, n in settings:
        gaps = {r: [] for r in RIDGES}
        ratios = {r: [] for r in RIDGES}
        for seed in range(args.seeds):
            rng = np.random.default_rng(1000 * seed + n)
            draw = simulate.flexmix_k4 if name == "flexmix-K4" else lambda n, rng, name=name: simulated(name, n, rng)
            X, y, ll_truth, var_truth = draw(n, rng)
            for ridge, kw in RIDGES.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = HMERegressor(**shapes[name], max_iter=2000, tol=1e-8, random_state=seed, **kw).fit(X, y)
                gaps[ridge].append(float(model.log_likelihood(X, y).sum()) - ll_truth)
                ratios[ridge].append(noise_variance(model, X) / var_truth)
        for ridge in RIDGES:
            rows.append((name, n, ridge, np.median(gaps[ridge]), min(gaps[ridge]), np.median(ratios[ridge])))
            print(f"{name:18s} n={n:6d} {ridge:22s} gap median {rows[-1][3]:9.2f} worst {rows[-1][4]:9.2f} "
                  f"typical noise variance x{rows[-1][5]:.2f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    lines = [f"Cost of the default ridges, `python benchmarks/bench_ridge_cost.py --seeds {args.seeds} --n {args.n} "
             f"--big {args.big}` ({platform.machine()}, jax {jax.__version__}, float64)", "",
             "| model | n | ridges | log-lik − truth, median (nats) | worst | fitted / true typical noise variance |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {n} | {r} | {g:.2f} | {w:.2f} | {v:.2f} |" for m, n, r, g, w, v in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
