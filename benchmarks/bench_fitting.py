"""EM against gradient-based and Bayesian fitting of the same HME: log-likelihood reached, passes over the data, time.

Jordan & Jacobs (1994) report that EM needs tens of passes where gradient ascent needs thousands. For each data set
every method starts from the same point (k-means responsibilities and one EM step) and runs to its stopping rule:

* EM (Newton gate steps), L-BFGS and Adam (full batch, lr 0.01) and Adam on minibatches of 256 rows (lr 0.01);
* NUTS and SVI (numpyro; started at the EM estimate) on the simulated data only.

Printed per method: final mean log-likelihood on the training data (and held-out for kin8nm), passes over the data
(EM iterations; objective-and-gradient evaluations including line-search steps; minibatch epochs count one pass
of gradients plus one full evaluation), the mean log-likelihood after 10 / 30 / 100 / 300 passes, and the median
wall time of ``--reps`` compiled runs. Usage:

    python benchmarks/bench_fitting.py            # about 5 minutes on two cores
    python benchmarks/bench_fitting.py --no-bayes
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import hme  # noqa: E402
from hme.datasets import load_kin8nm  # noqa: E402

METHODS = {
    "EM": lambda spec, X, y, p0: hme.fit_em(spec, X, y, start_params=p0, max_iter=3000, tol=1e-8),
    "L-BFGS": lambda spec, X, y, p0: hme.fit_gradient(spec, X, y, start_params=p0, max_iter=3000, tol=1e-8),
    "Adam": lambda spec, X, y, p0: hme.fit_gradient(spec, X, y, start_params=p0, optimizer="adam", learning_rate=0.01,
                                                    max_iter=5000, tol=1e-8),
    "Adam minibatch 256": lambda spec, X, y, p0: hme.fit_gradient(spec, X, y, start_params=p0, optimizer="adam",
                                                                  learning_rate=0.01, batch_size=256, max_iter=300,
                                                                  tol=1e-6),
}


def _simulated(rng, n=5000):
    spec = hme.make_spec(2, depth=2)
    truth = hme.HMEParams(
        hme.GateParams(np.array([[0.0, 0.5], [0.0, -1.0], [0.0, 1.0]]),
                       np.array([[[0, 0], [3.0, 0]], [[0, 0], [0, 3.0]], [[0, 0], [0, -3.0]]], float)),
        hme.ExpertParams(np.array([[1.0], [-1.0], [2.0], [0.0]]), rng.normal(size=(4, 2, 1)), np.full((4, 1, 1), 0.09)),
    )
    X = rng.uniform(-2, 2, (n, 2))
    pi = np.asarray(hme.gate_path_probs(spec, truth, X))
    leaf = (rng.uniform(size=(n, 1)) > np.cumsum(pi, 1)).sum(1).clip(0, 3)
    mu = np.asarray(hme.leaf_means(spec, truth, X))[np.arange(n), leaf, 0]
    return spec, X, mu + 0.3 * rng.normal(size=n)


def _at_passes(res, passes=(10, 30, 100, 300)):
    """Mean penalised log-likelihood after k passes (history is per iteration; evaluations/iteration scale it)."""
    h = np.asarray(res.history)
    h = h[np.isfinite(h)]
    per_iter = float(res.n_evaluations) / max(int(res.n_iter), 1)
    out = []
    for k in passes:
        i = int(k / max(per_iter, 1e-9))
        out.append(h[min(i, len(h) - 1)] if len(h) else np.nan)
    return out


def _time(f, reps):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f())
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def run_point_methods(name, spec, X, y, Xte=None, yte=None, reps=3):
    p0 = jax.device_get(hme.fit_em(spec, X, y, n_init=1, random_state=1, max_iter=1).params)
    print(f"\n{name}: n = {len(y)}, {spec.tree.n_leaves} leaves, same start for every method")
    head = f"{'method':20s} {'ll/n train':>10s} {'ll/n test':>10s} {'passes':>7s} {'iter':>6s} " \
           f"{'@10':>8s} {'@30':>8s} {'@100':>8s} {'@300':>8s} {'wall s':>7s}"
    print(head)
    for m, fit in METHODS.items():
        res = fit(spec, X, y, p0)
        ll = float(res.log_likelihood) / len(y)
        llt = float(np.mean(hme.log_likelihood(spec, res.params, Xte, yte))) if Xte is not None else np.nan
        wall = _time(lambda fit=fit: fit(spec, X, y, p0), reps)
        at = _at_passes(res)
        print(f"{m:20s} {ll:10.4f} {llt:10.4f} {int(res.n_evaluations):7d} {int(res.n_iter):6d} "
              + " ".join(f"{v:8.4f}" for v in at) + f" {wall:7.2f}")


def run_bayes(X, y):
    print("\nBayesian fits of a depth-1 HME on the first 500 simulated rows (started at the EM estimate)")
    print(f"{'method':20s} {'mean ll/n':>10s} {'R-hat':>7s} {'min ESS':>8s} {'diverg.':>7s} {'wall s':>7s}")
    spec = hme.make_spec(2, depth=1)
    for method, kw in (("nuts", dict(num_warmup=500, num_samples=500, num_chains=2)), ("svi", dict(svi_steps=3000))):
        t = time.perf_counter()
        b = hme.BayesianHMERegressor(depth=1, method=method, random_state=0, **kw).fit(X, y)
        wall = time.perf_counter() - t
        post = b.posterior_params_
        idx = np.linspace(0, post.gates.bias.shape[0] - 1, 100).astype(int)
        draws = [jax.tree_util.tree_map(lambda a, i=i: a[i], post) for i in idx]
        lls = [float(np.mean(hme.log_likelihood(spec, d, X, y))) for d in draws]
        print(f"{method.upper():20s} {np.mean(lls):10.4f} {b.rhat_:7.3f} {b.ess_:8.0f} {b.divergences_:7d} {wall:7.1f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-bayes", action="store_true")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    spec, X, y = _simulated(rng)
    run_point_methods("simulated depth-2 HME", spec, X, y, reps=args.reps)
    Xk, yk = load_kin8nm(np.float64)
    perm = np.random.default_rng(0).permutation(len(yk))
    tr, te = perm[:6144], perm[6144:]
    run_point_methods("kin8nm, depth 3", hme.make_spec(8, depth=3), Xk[tr], yk[tr], Xk[te], yk[te], reps=args.reps)
    if not args.no_bayes:
        run_bayes(X[:500], y[:500])


if __name__ == "__main__":
    main()
