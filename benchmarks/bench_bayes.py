"""Bayesian HMEs per family: posterior-predictive coverage of fresh draws, mixing and time, side by side.

For each family that ``BayesianHMERegressor`` samples (Gaussian, Student-t and Poisson experts; two correlated
outputs for Gaussian and Student-t; Gaussian gates, a joint model of x and y) one two-expert truth is fixed,
``--n`` rows are drawn from it (:func:`hme.simulate.sample`), NUTS runs 2 chains of ``--draws`` draws after as many
warm-up steps from the EM fit, and the central 90% posterior-predictive intervals are scored on 3000 fresh draws
from the truth. Printed and written (``--out docs/bayes.md``): coverage per output, the worst R-hat, the smallest
effective sample size, divergences and the wall time of the fit.

    python benchmarks/bench_bayes.py --out docs/bayes.md
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import hme
from hme.params import ExpertParams, GateParams, HMEParams
from hme.simulate import sample

#: two experts split at x = 0.5 by a softmax gate of slope 12 on x ~ U[0, 1]
SPLIT = GateParams(np.array([[0.0, -6.0]]), np.array([[[0.0], [12.0]]]))


def _cov(*blocks):
    return np.array(blocks, float)


def truths() -> dict:
    """name -> (ModelSpec, HMEParams, BayesianHMERegressor keywords)."""
    one = dict(intercept=np.array([[-1.0], [1.0]]), coef=np.array([[[2.0]], [[-1.0]]]))
    var1 = _cov([[0.09]], [[0.25]])
    two = dict(intercept=np.array([[-1.0, 2.0], [1.0, -1.0]]), coef=np.array([[[2.0, 0.0]], [[-1.0, 1.0]]]))
    cov2 = _cov([[0.09, 0.06], [0.06, 0.16]], [[0.16, -0.064], [-0.064, 0.16]])
    spec = lambda **kw: hme.make_spec(1, depth=1, **kw)
    return {
        "gaussian": (spec(), HMEParams(SPLIT, ExpertParams(**one, cov=var1)), {}),
        "student_t (ν = 4)": (spec(expert="student_t"),
                              HMEParams(SPLIT, ExpertParams(**one, cov=var1, df=np.array([4.0, 4.0]))),
                              {"expert": "student_t"}),
        "poisson": (spec(expert="poisson"),
                    HMEParams(SPLIT, ExpertParams(np.array([[0.5], [1.5]]), np.array([[[1.0]], [[-1.0]]]), None)),
                    {"expert": "poisson"}),
        "gaussian, 2 outputs": (spec(n_targets=2), HMEParams(SPLIT, ExpertParams(**two, cov=cov2)), {}),
        "student_t (ν = 5), 2 outputs": (spec(n_targets=2, expert="student_t"),
                                         HMEParams(SPLIT, ExpertParams(**two, cov=cov2, df=np.array([5.0, 5.0]))),
                                         {"expert": "student_t"}),
        "gaussian gate": (spec(gate="gaussian"),
                          HMEParams(GateParams(np.log([[0.4, 0.6]]), np.array([[[0.2], [0.8]]]),
                                               np.array([[[[0.01]], [[0.02]]]])),
                                    ExpertParams(**one, cov=var1)),
                          {"gate": "gaussian"}),
    }


def run(name, spec, params, kw, n, draws, seed):
    X, y = sample(spec, params, n, np.random.default_rng(seed))
    t = time.perf_counter()
    b = hme.BayesianHMERegressor(depth=1, num_warmup=draws, num_samples=draws, num_chains=2, random_state=seed,
                                 **kw).fit(X, y)
    secs = time.perf_counter() - t
    Xn, yn = sample(spec, params, 3000, np.random.default_rng(seed + 1000))
    lo, hi = b.predict_interval(Xn, 0.9)
    cover = np.atleast_1d(np.mean((yn >= lo) & (yn <= hi), axis=0))
    return {"family": name, "coverage": cover, "rhat": b.rhat_, "ess": b.ess_, "divergences": b.divergences_,
            "seconds": secs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="training rows per family")
    ap.add_argument("--draws", type=int, default=250, help="NUTS warm-up steps and draws per chain")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the markdown table here (docs/bayes.md)")
    args = ap.parse_args(argv)
    rows = [run(name, *t, args.n, args.draws, args.seed) for name, t in truths().items()]
    head = "| family | 90% interval coverage (per output) | worst R-hat | smallest ESS | divergences | fit s |"
    lines = [head, "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        cov = ", ".join(f"{c:.3f}" for c in r["coverage"])
        lines.append(f"| {r['family']} | {cov} | {r['rhat']:.3f} | {r['ess']:.0f} | {r['divergences']} | "
                     f"{r['seconds']:.1f} |")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("# Bayesian HMEs per family: posterior-predictive coverage\n\n"
                     f"Written by `python benchmarks/bench_bayes.py --out {args.out}` (n = {args.n} training rows from "
                     f"a two-expert truth per family, NUTS 2 chains × {args.draws} draws after {args.draws} warm-up "
                     "steps, started at the EM fit; central 90% posterior-predictive intervals scored on 3000 fresh "
                     "draws from the truth; Poisson intervals are sets of counts, so their coverage is at least the "
                     "level). The truths are in the script.\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
