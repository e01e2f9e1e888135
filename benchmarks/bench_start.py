"""Does the default start reach the maximum likelihood? Reached-the-truth rate and time, before and after emEM.

For every setting (gate family, depth, inputs, n) and seed, data are drawn from a random exactly specified HME
(:func:`hme.simulate.random_truth`: x ~ U[0, 1]^d, or the Gaussian gate's mixture) and fitted from the default start
with ``n_init=3``. A fit *reaches the truth* when its log-likelihood is at least the true parameters' minus 1 nat
(the MLE is never below the truth). Two starts are compared:

* ``plain``: ``n_candidates=1``, one random start per run (the start before issue 11), no re-seeding;
* ``emEM``: the best of ``n_candidates=20`` random starts after 10 EM iterations each per run, no re-seeding;
* ``default``: emEM, then, for trees with more than one gate or with Laplace gates, the re-seeded runs
  (``fit_em(reseed=None)``: leaves rearranged, Laplace keys re-drawn); for one softmax or Gaussian gate it is the
  emEM fit itself.

Times are wall-clock medians per fit after the first fit of each setting (which compiles).

    python benchmarks/bench_start.py [--seeds 20] [--n 2000 20000] [--out docs/start.md]
    python benchmarks/bench_start.py --quick      # 5 seeds, n = 2000
    python benchmarks/bench_start.py --gates laplace --starts default --n 100000 --seeds 10
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

SETTINGS = [("softmax", 1, 1), ("softmax", 2, 1), ("softmax", 2, 3), ("softmax", 2, 5),
            ("laplace", 1, 1), ("laplace", 1, 3), ("laplace", 2, 1), ("laplace", 2, 3), ("laplace", 2, 5),
            ("gaussian", 1, 1), ("gaussian", 1, 3), ("gaussian", 1, 5)]
STARTS = {"plain": dict(n_candidates=1, reseed=False), "emEM": dict(reseed=False), "default": dict()}


def run_setting(gate, depth, d, n, seeds, starts=tuple(STARTS), log=print) -> list[dict]:
    import jax

    import hme
    from hme.em import reseeds
    from hme.simulate import random_truth, sample, total_log_likelihood

    spec = hme.make_spec(d, depth=depth, gate=gate)
    rows = []
    for name in starts:
        kw = STARTS[name]
        if name == "default" and not reseeds(spec) and "emEM" in starts:
            rows.append({**rows[[r["start"] for r in rows].index("emEM")], "start": name})
            continue
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
           "`n_init=3` everywhere; *plain* is one random start per run (`n_candidates=1`, no re-seeding), *emEM* "
           "the best of 20 random starts after 10 EM iterations per run (no re-seeding), *default* what `fit_em` "
           "does by default: emEM, then, for trees with more than one gate or with Laplace gates, the re-seeded runs "
           "(leaves rearranged, Laplace keys re-drawn; for one softmax or Gaussian gate the emEM fit itself). "
           "Times: median wall-clock seconds per fit, compilation excluded.", ""]
    names = [s for s in STARTS if any(r["start"] == s for r in rows)]
    out += ["| gate | depth | d | n | " + " | ".join(f"reached, {s}" for s in names) + " | "
            + " | ".join(f"worst gap {s} (nats)" for s in names) + " | " + " | ".join(f"time {s} (s)" for s in names)
            + " |", "|---|---|---|---|" + "---|" * (3 * len(names))]
    by = {}
    for r in rows:
        by.setdefault((r["gate"], r["depth"], r["d"], r["n"]), {})[r["start"]] = r
    for (gate, depth, d, n), rr in by.items():
        cells = ([f"{rr[s]['reached']:.2f}" for s in names] + [f"{rr[s]['worst_gap']:.1f}" for s in names]
                 + [f"{rr[s]['median_s']:.2f}" for s in names])
        out.append(f"| {gate} | {depth} | {d} | {n} | " + " | ".join(cells) + " |")
    last = names[-1]
    short = sum(rr[last]["reached"] < 0.95 for rr in by.values())
    out += ["", f"Settings with {last} below 0.95: {short} of {len(by)}.", ""]
    return "\n".join(out)


def main(argv=None) -> None:
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--quick", action="store_true", help="5 seeds, n = 2000")
    ap.add_argument("--gates", nargs="+", default=["softmax", "laplace", "gaussian"])
    ap.add_argument("--starts", nargs="+", default=list(STARTS), choices=list(STARTS))
    ap.add_argument("--out", default=None, help="write the table as Markdown here")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.n = 5, [2000]

    import jax

    jax.config.update("jax_enable_x64", True)
    t0 = time.perf_counter()
    settings = [s for s in SETTINGS if s[0] in args.gates]
    rows = [r for n in args.n for s in settings for r in run_setting(*s, n, args.seeds, args.starts)]
    md = to_markdown(rows, sys.argv[1:] if argv is None else argv, time.perf_counter() - t0)
    print(md)
    if args.out:
        with open(args.out, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
