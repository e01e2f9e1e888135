"""Does the default start reach the maximum likelihood? Reached-the-truth rate and time, before and after emEM.

For every setting (gate family, depth, inputs, n) and seed, data are drawn from a random exactly specified HME
(:func:`hme.simulate.random_truth`: x ~ U[0, 1]^d, or the Gaussian gate's mixture) and fitted from the default start
with ``n_init=3``. A fit *reaches the truth* when its log-likelihood is at least the true parameters' minus 1 nat
(the MLE is never below the truth). Two starts are compared:

* ``plain``: ``n_candidates=1``, one random start per run (the start before issue 11);
* ``emEM``: the default, the best of ``n_candidates=20`` random starts after 10 EM iterations each per run.

Times are wall-clock medians per fit after the first fit of each setting (which compiles).

    python benchmarks/bench_start.py [--seeds 20] [--n 2000 20000] [--out docs/start.md]
    python benchmarks/bench_start.py --quick      # 5 seeds, n = 2000
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

SETTINGS = [("softmax", 1, 1), ("softmax", 2, 1), ("softmax", 2, 3), ("softmax", 2, 5),
            ("laplace", 1, 1), ("laplace", 1, 3), ("laplace", 2, 1), ("laplace", 2, 3), ("laplace", 2, 5),
            ("gaussian", 1, 1), ("gaussian", 1, 3), ("gaussian", 1, 5)]
STARTS = {"plain": dict(n_candidates=1), "emEM": dict()}


def run_setting(gate, depth, d, n, seeds, log=print) -> list[dict]:
    import jax

    import hme
    from hme.simulate import random_truth, sample, total_log_likelihood

    spec = hme.make_spec(d, depth=depth, gate=gate)
    rows = []
    for name, kw in STARTS.items():
        gaps, times = [], []
        for seed in range(seeds):
            rng = np.random.default_rng(10_000 + seed)
            truth = random_truth(spec, rng)
            X, y = sample(spec, truth, n, rng)
            t = time.perf_counter()
            res = hme.fit_em(spec, X, y, n_init=3, max_iter=2000, tol=1e-8, random_state=seed, **kw)
            res = jax.block_until_ready(res)
            times.append(time.perf_counter() - t)
            gaps.append(total_log_likelihood(spec, res.params, X, y) - total_log_likelihood(spec, truth, X, y))
        gaps = np.array(gaps)
        row = dict(gate=gate, depth=depth, d=d, n=n, start=name, seeds=seeds, reached=float(np.mean(gaps >= -1.0)),
                   worst_gap=float(gaps.min()), median_s=float(np.median(times[1:] if seeds > 1 else times)))
        log(f"{gate:8s} depth {depth} d {d} n {n:6d} {name:5s}: reached {row['reached']:.2f}, worst gap "
            f"{row['worst_gap']:9.1f} nats, median fit {row['median_s']:.2f} s")
        rows.append(row)
    return rows


def to_markdown(rows, args, seconds) -> str:
    out = ["# Reaching the maximum likelihood from the default start", "",
           f"Written by `python benchmarks/bench_start.py {' '.join(args)}` ({platform.machine()}, "
           f"{seconds:.0f} s). A fit *reaches* when its log-likelihood is at least the true parameters' minus 1 nat; "
           "`n_init=3` everywhere; *plain* is one random start per run (`n_candidates=1`), *emEM* the default "
           "(best of 20 random starts after 10 EM iterations, per run). Times: median wall-clock seconds per fit, "
           "compilation excluded.", "",
           "| gate | depth | d | n | reached, plain | reached, emEM | worst gap plain (nats) | worst gap emEM | "
           "time plain (s) | time emEM (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in rows:
        by.setdefault((r["gate"], r["depth"], r["d"], r["n"]), {})[r["start"]] = r
    for (gate, depth, d, n), rr in by.items():
        p, e = rr["plain"], rr["emEM"]
        out.append(f"| {gate} | {depth} | {d} | {n} | {p['reached']:.2f} | {e['reached']:.2f} | {p['worst_gap']:.1f} | "
                   f"{e['worst_gap']:.1f} | {p['median_s']:.2f} | {e['median_s']:.2f} |")
    short = sum(rr["emEM"]["reached"] < 0.95 for rr in by.values())
    out += ["", f"Settings with emEM below 0.95: {short} of {len(by)}.", ""]
    return "\n".join(out)


def main(argv=None) -> None:
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--quick", action="store_true", help="5 seeds, n = 2000")
    ap.add_argument("--out", default=None, help="write the table as Markdown here")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.n = 5, [2000]

    import jax

    jax.config.update("jax_enable_x64", True)
    t0 = time.perf_counter()
    rows = [r for n in args.n for s in SETTINGS for r in run_setting(*s, n, args.seeds)]
    md = to_markdown(rows, sys.argv[1:] if argv is None else argv, time.perf_counter() - t0)
    print(md)
    if args.out:
        with open(args.out, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
