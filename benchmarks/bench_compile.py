"""What a first fit pays before it computes anything (issue 16 item 2): compilation and tracing.

Two tables, every figure from fresh Python processes (JAX keeps compiled programs for the life of a process):

1. **XLA:CPU emitters.** For each problem, ``hme.fit_em`` with its default start in a process with the
   persistent cache off, once with XLA's fusion emitters and once with the legacy loop emitters (hme picks the
   latter for programs over at most ``hme.aot.FAST_COMPILE_MAX_ROW_LEAVES`` row-leaf pairs): the first fit
   (tracing + compiling + fitting), the steady-state fit (median of ``--reps``) and one EM iteration (compiled
   with the same options, median of 7).
2. **Warm first fit.** flexmix's K=4 problem, ``HMERegressor(depth=1, branching=4)`` with defaults, in three
   fresh processes sharing one cache directory: empty; warm (compiled and exported programs); warm with the
   exported programs deleted (compiled programs only: every program is traced again). CPU seconds of the import
   and of the fit.

    python benchmarks/bench_compile.py --out docs/compile.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

#: (label, n, d, depth, branching)
PROBLEMS = [
    ("n=1e3, d=2, 4 leaves (depth 2)", 1_000, 2, 2, 2),
    ("n=1e4, d=2, 4 leaves (flat)", 10_000, 2, 1, 4),
    ("n=1e4, d=20, 8 leaves (depth 3)", 10_000, 20, 3, 2),
    ("n=3e4, d=5, 4 leaves (depth 2)", 30_000, 5, 2, 2),
    ("n=1e5, d=5, 4 leaves (depth 2)", 100_000, 5, 2, 2),
]

EMITTER_WORKER = r"""
import json, statistics, sys, time
import numpy as np
import jax
import hme
from hme import aot, em, fitting
from hme.fitting import prepare_fit

n, d, depth, branching = (int(a) for a in sys.argv[1:5])
emitters, reps = sys.argv[5], int(sys.argv[6])
aot.FAST_COMPILE_MAX_ROW_LEAVES = 1 << 62 if emitters == "legacy" else 0
rng = np.random.default_rng(0)
X = rng.normal(size=(n, d))
y = np.sin(2 * X[:, 0]) + X[:, 1] * (X[:, 2 % d] > 0) + 0.1 * rng.normal(size=n)
spec = hme.make_spec(d, depth=depth, branching=branching)

def fit(seed):
    t = time.perf_counter()
    res = hme.fit_em(spec, X, y, random_state=seed, reseed=False)
    jax.block_until_ready(res)
    return time.perf_counter() - t, int(res.n_iter)

first, iters = fit(0)
steady = statistics.median(fit(s)[0] for s in range(1, reps + 1))
p = prepare_fit(spec, X, y, n_init=1, random_state=0, max_iter=5, tol=0.0, alpha=1e-6, gate_alpha=1e-4)
data, x_mean = fitting.center_inputs(spec, p.X, p.y, p.weight)
cfg = em.FitConfig()
opts = aot.compiler_options_for(p.X.shape[0], spec.tree.n_leaves) if emitters == "legacy" else {}
params = hme.params.center_params(spec, hme.fit_em(spec, X, y, max_iter=3).params, x_mean, +1.0)
step = jax.jit(lambda q, data: em.em_step(spec, cfg, q, data, p.opts)[1], compiler_options=opts or None)
jax.block_until_ready(step(params, data))
times = []
for _ in range(7):
    t = time.perf_counter()
    jax.block_until_ready(step(params, data))
    times.append(time.perf_counter() - t)
print("RESULT " + json.dumps(dict(first=first, steady=steady, iters=iters, iteration=statistics.median(times),
                                  options=opts)))
"""

WARM_WORKER = r"""
import json, time, warnings
import numpy as np
c0 = time.process_time()
from hme import HMERegressor, aot
from hme.simulate import flexmix_k4
imported = time.process_time() - c0
X, y, _, _ = flexmix_k4(10_000, np.random.default_rng(1))
c = time.process_time()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    HMERegressor(depth=1, branching=4, random_state=0).fit(X, y)
print("RESULT " + json.dumps(dict(imported=imported, fit=time.process_time() - c, counts=aot.counts)))
"""


def _result(code, args, env):
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, text=True, capture_output=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def emitters_table(reps: int) -> list[str]:
    env = dict(os.environ, HME_COMPILATION_CACHE="0")
    lines = ["| problem | emitters | first fit s | steady fit s | EM iterations | one iteration ms |",
             "|---|---|---|---|---|---|"]
    for label, n, d, depth, branching in PROBLEMS:
        rows = {}
        for emitters in ("fusion", "legacy"):
            print(f"{label}, {emitters} emitters ...", file=sys.stderr)
            rows[emitters] = r = _result(EMITTER_WORKER, (n, d, depth, branching, emitters, reps), env)
            lines.append(f"| {label} | {emitters} | {r['first']:.2f} | {r['steady']:.3f} | {r['iters']} | "
                         f"{1e3 * r['iteration']:.2f} |")
        f, g = rows["fusion"], rows["legacy"]
        lines.append(f"| {label} | legacy / fusion | {g['first'] / f['first']:.2f} | {g['steady'] / f['steady']:.2f} "
                     f"| | {g['iteration'] / f['iteration']:.2f} |")
    return lines


def warm_table() -> list[str]:
    lines = ["| process | import CPU s | first fit CPU s | total | exported / loaded / traced programs |",
             "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HME_COMPILATION", "JAX_COMPILATION"))}
        env["HME_COMPILATION_CACHE"] = os.path.join(tmp, "cache")
        runs = [("empty cache", None), ("warm: compiled + exported programs", None),
                ("warm: compiled programs only (exported deleted)", "delete")]
        for label, action in runs:
            if action == "delete":
                shutil.rmtree(os.path.join(tmp, "cache", "hme-exported"), ignore_errors=True)
            print(f"{label} ...", file=sys.stderr)
            r = _result(WARM_WORKER, (), env)
            c = r["counts"]
            lines.append(f"| {label} | {r['imported']:.2f} | {r['fit']:.2f} | {r['imported'] + r['fit']:.2f} | "
                         f"{c['exported']} / {c['loaded']} / {c['jit']} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="steady-state fits per problem (median)")
    ap.add_argument("--out", help="also write the report (Markdown) here")
    args = ap.parse_args(argv)
    import jax

    from hme import aot

    head = [
        "# First fits: compilation and tracing",
        "",
        f"Written by `python benchmarks/bench_compile.py` ({platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__}). Every row is a fresh process.",
        "",
        "## XLA:CPU's fusion emitters against the legacy loop emitters",
        "",
        "`hme.fit_em` with its default start (emEM screening, `reseed=False`), persistent cache off. First fit: "
        "tracing, compiling and fitting; steady: the median of further fits in the same process; one iteration: "
        "an EM step compiled with the same options (median of 7). hme uses the legacy emitters for programs over "
        f"at most `hme.aot.FAST_COMPILE_MAX_ROW_LEAVES` = {aot.FAST_COMPILE_MAX_ROW_LEAVES:,} row-leaf pairs "
        "(padded rows × leaves).",
        "",
    ]
    body = emitters_table(args.reps)
    warm = [
        "",
        "## Warm first fit on flexmix's K=4 problem",
        "",
        "`HMERegressor(depth=1, branching=4)` with defaults on n = 10,000 rows, three processes sharing one cache "
        "directory. Programs: fitting programs exported to / loaded from `hme-exported`, or traced and run by "
        "`jax.jit` (`hme.aot.counts`).",
        "",
    ] + warm_table()
    report = "\n".join(head + body + warm) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
