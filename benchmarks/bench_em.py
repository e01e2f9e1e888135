"""EM speed against the hardware floor: compile time, time per EM iteration, GFLOP/s, memory.

For every (n, d, depth) of a binary tree with Gaussian experts and softmax gates on all d inputs it prints

* compile   -- seconds to compile the whole `fit_em` program (init + restarts + EM loop);
* iter      -- median seconds of one steady-state EM iteration (E-step + M-step, compiled);
* stats GF/s -- achieved GFLOP/s of the expert and gate sufficient statistics (weighted Gram matrices);
* floor     -- 2·n·d²·n_leaves flops (the experts' statistics) at the matmul rate measured by this script;
* ratio     -- iter / floor (the issue's target: <= 3 at n = 1e6, d = 20, depth 4);
* mem/X     -- extra peak resident memory while fitting, in units of the size of X (target: < 4 plus O(n·L)).

Each configuration runs in its own process (clean memory peaks). Usage:

    python benchmarks/bench_em.py                      # the full grid (about 10 minutes on 2 cores)
    python benchmarks/bench_em.py --n 1000000 --d 20 --depth 4 --gate-solver bound
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

#: the last paragraph of docs/performance.md
SCALING_POINTER = ("Scaling curves (time per iteration with the floor line and peak memory against n, d, leaves and "
                   "classes): [`scaling.md`](scaling.md), written by `benchmarks/bench_scaling.py`.")
COMPILE_POINTER = ("What a first fit pays before computing (compilation with XLA:CPU's fusion or legacy emitters, "
                   "tracing, and the warm first fit with and without the exported programs of `hme.aot`): "
                   "[`compile.md`](compile.md), written by `benchmarks/bench_compile.py`.")


def matmul_rate(dtype, size=2048, reps=7):
    """GFLOP/s of a compiled square matmul of ``size`` (median of ``reps``): the floor's rate."""
    import jax

    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        ts.append(time.perf_counter() - t)
    return 2 * size**3 / np.median(ts) / 1e9


def _median_time(f, *args, reps=5):
    import jax

    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


class _PeakRSS:
    """Samples the resident set size in a background thread."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self):
        self.start = self.proc.memory_info().rss
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _steady_state(spec, X, y, gate_solver, fitted):
    """(data, opts, cfg, params) of a steady-state EM iteration: the padded, centred data the fit uses and the
    fitted parameters on the centred inputs."""
    import jax
    import jax.numpy as jnp

    import hme
    from hme import em, fitting
    from hme._linalg import padded_length
    from hme.model import make_design

    n, dtype = X.shape[0], X.dtype
    n_pad = padded_length(n)
    Xc = jnp.asarray(np.pad(X - X.mean(0), ((0, n_pad - n), (0, 0))))
    data = fitting.FitData(
        make_design(spec, Xc),
        spec.expert_family.prepare_targets(jnp.asarray(np.pad(y, (0, n_pad - n))), spec.n_targets, dtype),
        jnp.asarray(np.pad(np.ones(n, dtype), (0, n_pad - n))),
    )
    opts = fitting.FitOptions(tol=jnp.asarray(0.0, dtype), alpha=jnp.asarray(1e-6, dtype),
                              gate_alpha=jnp.asarray(1e-4, dtype), var_floor=jnp.full((1,), 1e-6, dtype))
    params = jax.tree_util.tree_map(jnp.asarray, fitted)
    params = hme.params.center_params(spec, params, jnp.asarray(X.mean(0)), +1.0)
    return data, opts, em.FitConfig(gate_solver=gate_solver), params


def run_one(n, d, depth, dtype_name, gate_solver, rate, classes=0):
    """One configuration's figures (module docstring); ``classes`` > 0: multinomial experts on labels drawn from
    a random linear softmax, with the floor ``2·n·d²·leaves·(classes - 1)`` (the per-class Gram blocks that
    precondition their Newton steps) and no separate statistics timing."""
    import jax
    import jax.numpy as jnp

    import hme
    from hme import em, fitting
    from hme._linalg import weighted_gram

    dtype = np.dtype(dtype_name)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(dtype)
    if classes:
        y = np.argmax(X @ rng.normal(size=(d, classes)) + rng.gumbel(size=(n, classes)), axis=1)
        spec = hme.make_spec(d, depth=depth, expert="categorical", n_targets=classes)
    else:
        y = (np.sin(2 * X[:, 0]) + X[:, 1] * (X[:, 2 % d] > 0) + 0.1 * rng.normal(size=n)).astype(dtype)
        spec = hme.make_spec(d, depth=depth)
    L = spec.tree.n_leaves

    # compile time of the whole fit program (EM alone: the re-seeding stage is timed by fit_cost)
    kw = dict(max_iter=5, tol=0.0, gate_solver=gate_solver, reseed=False)
    t = time.perf_counter()
    res = hme.fit_em(spec, X, y, **kw)
    jax.block_until_ready(res)
    first = time.perf_counter() - t
    t = time.perf_counter()
    res = hme.fit_em(spec, X, y, **kw)
    jax.block_until_ready(res)
    second = time.perf_counter() - t
    compile_s = first - second

    with _PeakRSS() as mem:
        jax.block_until_ready(hme.fit_em(spec, X, y, **kw))
    extra = mem.peak - mem.start

    # steady-state iteration on the padded, centred data the fit uses
    data, opts, cfg, params = _steady_state(spec, X, y, gate_solver, res.params)
    step = jax.jit(lambda p, data: em.em_step(spec, cfg, p, data, opts)[1])
    it = _median_time(step, params, data)

    if classes:
        floor = 2 * n * d * d * L * (classes - 1) / (rate * 1e9)
        return dict(n=n, d=d, depth=depth, leaves=L, classes=classes, dtype=dtype_name, gate_solver=gate_solver,
                    compile_s=compile_s, iter_s=it, stats_gflops=float("nan"), floor_s=floor, ratio=it / floor,
                    mem_over_X=extra / X.nbytes, extra_mb=extra / 2**20, x_mb=X.nbytes / 2**20)
    # the sufficient statistics alone: leaf Grams (+ gate Hessian Grams for the Newton solver)
    st = jax.jit(lambda p, data: fitting.e_step(spec, p, data, opts))(params, data)
    K = L + (spec.tree.n_gates if gate_solver == "newton" else 0)
    W = jnp.concatenate([st.leaf_w] + ([st.leaf_w[:, : spec.tree.n_gates]] if gate_solver == "newton" else []), 1)
    gram = jax.jit(weighted_gram)
    t_stats = _median_time(gram, data.design.expert, W)
    q = d + 1
    stats_gflops = 2 * data.y.shape[0] * q * q * K / t_stats / 1e9
    floor = 2 * n * d * d * L / (rate * 1e9)
    return dict(
        n=n, d=d, depth=depth, leaves=L, classes=0, dtype=dtype_name, gate_solver=gate_solver,
        compile_s=compile_s, iter_s=it, stats_gflops=stats_gflops, floor_s=floor, ratio=it / floor,
        mem_over_X=extra / X.nbytes, extra_mb=extra / 2**20, x_mb=X.nbytes / 2**20,
    )


def _moments_iteration(spec, params, X, y, w, opts, block=4096):
    """One bound-gate EM iteration as a scan over row blocks of :func:`hme.moments.chunk_moments`, then the
    closed-form step: every per-row quantity lives only inside a block."""
    import jax
    import jax.numpy as jnp

    from hme.moments import chunk_moments, moments_step

    n = X.shape[0]
    block = min(block, n)
    nb = n // block
    split = lambda a: a[: nb * block].reshape((nb, block) + a.shape[1:])

    def body(acc, blk):
        mom, _ = chunk_moments(spec, params, *blk)
        return jax.tree_util.tree_map(jnp.add, acc, mom), None

    first, _ = chunk_moments(spec, params, X[:block], y[:block], w[:block])
    zero = jax.tree_util.tree_map(jnp.zeros_like, first)
    mom, _ = jax.lax.scan(body, zero, (split(X), split(y), split(w)))
    return moments_step(spec, params, mom, opts)


def fit_cost(n, d, depth, dtype_name, reseed):
    """Wall seconds, peak extra memory / size(X) and objective of a default ``hme.fit_em`` (``max_iter=20``),
    compiled beforehand on the same shapes, with or without the re-seeding stage."""
    import hme

    dtype = np.dtype(dtype_name)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(dtype)
    y = (np.sin(2 * X[:, 0]) + X[:, 1] * (X[:, 2 % d] > 0) + 0.1 * rng.normal(size=n)).astype(dtype)
    spec = hme.make_spec(d, depth=depth)
    kw = dict(max_iter=20, reseed=reseed, interruptible=False)
    hme.fit_em(spec, X, y, random_state=1, **kw)  # compile
    with _PeakRSS() as mem:
        t = time.perf_counter()
        res = hme.fit_em(spec, X, y, **kw)
        obj = float(res.objective)
        wall = time.perf_counter() - t
    return dict(n=n, d=d, depth=depth, reseed=reseed, wall_s=wall, mem_over_X=(mem.peak - mem.start) / X.nbytes,
                objective=obj)


def profile_one(n, d, depth, dtype_name, gate_solver, rate, reps):
    """Seconds of each part of one EM iteration, each compiled on its own, on the padded, centred data."""
    import jax
    import jax.numpy as jnp

    import hme
    from hme import em, fitting
    from hme import gates as gate_ops
    from hme._linalg import weighted_gram
    from hme._logit import newton_weights
    from hme.model import edge_mass

    dtype = np.dtype(dtype_name)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(dtype)
    y = (np.sin(2 * X[:, 0]) + X[:, 1] * (X[:, 2 % d] > 0) + 0.1 * rng.normal(size=n)).astype(dtype)
    spec = hme.make_spec(d, depth=depth)
    L, G = spec.tree.n_leaves, spec.tree.n_gates
    res = hme.fit_em(spec, X, y, max_iter=5, tol=0.0, gate_solver=gate_solver, reseed=False)
    data, opts, cfg, params = _steady_state(spec, X, y, gate_solver, res.params)
    De, Dg = data.design
    st = jax.jit(lambda p, data: fitting.e_step(spec, p, data, opts))(params, data)
    edge_w = edge_mass(spec, st.leaf_w)
    node_w = jnp.sum(edge_w, -1)
    newton = gate_solver == "newton"
    hw = newton_weights(st.gate_log_prob, node_w, spec.tree.child_mask)
    W = jnp.concatenate([st.leaf_w, hw], 1) if newton else st.leaf_w
    grams = jax.jit(weighted_gram)(De, W)
    leaf_gram = grams[:L]
    node_gram = jnp.einsum("gl,lij->gij", jnp.asarray(spec.tree.gate_leaf, De.dtype), leaf_gram)
    hess = grams[L:] if newton else None
    parts = {
        "whole EM iteration": (jax.jit(lambda p, data: em.em_step(spec, cfg, p, data, opts)[1]), (params, data)),
        "E-step (log-likelihoods, posteriors, objective)": (
            jax.jit(lambda p, data: fitting.e_step(spec, p, data, opts).leaf_w), (params, data)),
        "weighted Grams, every weight column (Newton: leaves + gate Hessians)": (jax.jit(weighted_gram), (De, W)),
        "weighted Grams (leaves only: the floor's work)": (jax.jit(weighted_gram), (De, st.leaf_w)),
        "gate M-step given the Grams": (
            jax.jit(lambda lp, ew, nw, ng, hg: gate_ops.m_step(spec, params.gates, Dg, lp, ew, nw, opts.gate_alpha,
                                                               gate_solver, ng, hg)),
            (st.gate_log_prob, edge_w, node_w, node_gram if not newton else None, hess)),
        "expert M-step given the Grams": (
            jax.jit(lambda lw, g: spec.expert_family.m_step(spec, params.experts, De, data.y, lw, st.aux, g, opts)),
            (st.leaf_w, leaf_gram)),
    }
    if gate_solver == "bound":
        parts["one-pass iteration from block moments (hme.moments)"] = (
            jax.jit(lambda p, X, y, w: _moments_iteration(spec, p, X, y, w, opts)),
            (params, jnp.asarray(np.pad(X - X.mean(0), ((0, data.y.shape[0] - n), (0, 0)))), data.y, data.weight))
    out = {name: _median_time(f, *args, reps=reps) for name, (f, args) in parts.items()}
    floor = 2 * n * d * d * L / (rate * 1e9)
    return dict(n=n, d=d, depth=depth, leaves=L, gates=G, dtype=dtype_name, gate_solver=gate_solver, floor_s=floor,
                parts=out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--d", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--depth", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--gate-solver", default="newton", choices=["newton", "bound"])
    ap.add_argument("--profile", action="store_true",
                    help="time each part of one iteration (both gate solvers) and write docs/performance.md")
    ap.add_argument("--write", action="store_true", help="with --profile: write docs/performance.md")
    ap.add_argument("--reps", type=int, default=7, help="repetitions per timing (the median is reported)")
    ap.add_argument("--reseed-n", type=int, default=100_000,
                    help="with --profile: rows of the default-fit cost table (re-seeding on and off; depth 3)")
    ap.add_argument("--fit-cost", type=int, choices=[0, 1], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--classes", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dtype == "float64":
        os.environ["JAX_ENABLE_X64"] = "1"
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if args.one and args.fit_cost is not None:
        print("RESULT " + json.dumps(fit_cost(args.n[0], args.d[0], args.depth[0], args.dtype, args.fit_cost == 1)))
        return
    if args.one and args.profile:
        out = profile_one(args.n[0], args.d[0], args.depth[0], args.dtype, args.gate_solver, args.rate, args.reps)
        print("RESULT " + json.dumps(out))
        return
    if args.one:
        out = run_one(args.n[0], args.d[0], args.depth[0], args.dtype, args.gate_solver, args.rate, args.classes)
        print("RESULT " + json.dumps(out))
        return
    import jax.numpy as jnp

    rate = matmul_rate(jnp.float32 if args.dtype == "float32" else jnp.float64)
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} cores; jax "
        f"{jax.__version__}"
    )
    print(f"measured matmul rate ({args.dtype}, 2048x2048): {rate:.1f} GFLOP/s; gate solver: {args.gate_solver}\n")
    head = (
        f"{'n':>8s} {'d':>3s} {'depth':>5s} {'leaves':>6s} {'compile s':>9s} {'iter s':>8s} {'stats GF/s':>10s} "
        f"{'floor s':>8s} {'ratio':>6s} {'mem/X':>6s} {'X MB':>7s}"
    )
    if args.profile:
        return write_profile(args, rate)
    print(head)
    print("-" * len(head))
    for n in args.n:
        for d in args.d:
            for depth in args.depth:
                cmd = [sys.executable, __file__, "--one", "--n", str(n), "--d", str(d), "--depth", str(depth),
                       "--dtype", args.dtype, "--gate-solver", args.gate_solver, "--rate", str(rate)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if not line:
                    print(f"{n:8d} {d:3d} {depth:5d}  failed: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(line[0][7:])
                print(
                    f"{n:8d} {d:3d} {depth:5d} {r['leaves']:6d} {r['compile_s']:9.2f} {r['iter_s']:8.4f} "
                    f"{r['stats_gflops']:10.1f} {r['floor_s']:8.4f} {r['ratio']:6.1f} {r['mem_over_X']:6.1f} "
                    f"{r['x_mb']:7.1f}",
                    flush=True,
                )


def _child(args, rate, gate_solver, extra=(), n=None, depth=None):
    n = args.n[0] if n is None else n
    depth = args.depth[0] if depth is None else depth
    cmd = [sys.executable, __file__, "--one", "--n", str(n), "--d", str(args.d[0]), "--depth",
           str(depth), "--dtype", args.dtype, "--gate-solver", gate_solver, "--rate", str(rate),
           "--reps", str(args.reps), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if not line:
        raise SystemExit(f"{gate_solver}: failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(line[0][7:])


def write_profile(args, rate):
    """Per-part timings for both gate solvers and the whole-fit figures, printed and written to docs/performance.md."""
    import jax

    rows = {s: _child(args, rate, s, ("--profile",)) for s in ("newton", "bound")}
    fits = {s: _child(args, rate, s) for s in ("newton", "bound")}
    costs = {r: _child(args, rate, "newton", ("--fit-cost", str(r)), n=args.reseed_n, depth=3) for r in (0, 1)}
    r0 = rows["newton"]
    floor = r0["floor_s"]
    gflop = 2 * r0["n"] * r0["d"] ** 2 * r0["leaves"] / 1e9
    lines = [
        "# Performance: one EM iteration against the hardware floor",
        "",
        f"Written by `python benchmarks/bench_em.py --profile --n {args.n[0]} --d {args.d[0]} --depth {args.depth[0]}"
        f" --dtype {args.dtype}` on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores visible"
        f" ({len(os.sched_getaffinity(0))} usable), {jax.devices()[0].device_kind}, jax {jax.__version__}.",
        "",
        f"Problem: n = {r0['n']:,} rows, d = {r0['d']} inputs, a binary tree of depth {r0['depth']} "
        f"({r0['leaves']} Gaussian linear experts, {r0['gates']} softmax gates on all inputs), {args.dtype}. "
        f"Floor: the experts' weighted Gram matrices, 2·n·d²·leaves = {gflop:.1f} "
        f"GFLOP at the measured matmul rate of {rate:.1f} GFLOP/s (2048² GEMM, same process set-up) = "
        f"**{floor * 1e3:.0f} ms**. Each part is compiled on its own and timed as the median of {args.reps} calls; "
        "the parts overlap (the whole iteration fuses them), so they need not add up.",
        "",
        "| part | Newton gates: ms | × floor | bound gates: ms | × floor |",
        "|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys([*r0["parts"], *rows["bound"]["parts"]]))
    cell = lambda t: f"{t * 1e3:.0f} | {t / floor:.1f}" if t is not None else "– | –"
    for name in names:
        lines.append(f"| {name} | {cell(r0['parts'].get(name))} | {cell(rows['bound']['parts'].get(name))} |")
    lines += [
        "",
        "Whole fits (`hme.fit_em`, 5 iterations, one restart, `reseed=False`), in their own processes:",
        "",
        "| gate solver | compile s | iteration ms | × floor | peak extra memory / size(X) | size(X) MB |",
        "|---|---|---|---|---|---|",
    ]
    for s, r in fits.items():
        lines.append(f"| {s} | {r['compile_s']:.1f} | {r['iter_s'] * 1e3:.0f} | {r['ratio']:.1f} | "
                     f"{r['mem_over_X']:.1f} | {r['x_mb']:.0f} |")
    c0, c1 = costs[0], costs[1]
    lines += [
        "",
        f"A default fit with and without its re-seeding stage (`hme.fit_em(spec, X, y, max_iter=20)`, n = "
        f"{c0['n']:,}, d = {c0['d']}, depth {c0['depth']}, compiled beforehand, in their own processes). Re-seeding "
        "(issue 11: leaves rearranged, Laplace keys re-drawn) runs up to 3 rounds of 8 short runs of 30 EM "
        "iterations on all rows, each round's best then to convergence:",
        "",
        "| re-seeding | wall s | peak extra memory / size(X) | objective (mean penalised log-lik.) |",
        "|---|---|---|---|",
        f"| off | {c0['wall_s']:.1f} | {c0['mem_over_X']:.1f} | {c0['objective']:.6f} |",
        f"| on (default) | {c1['wall_s']:.1f} | {c1['mem_over_X']:.1f} | {c1['objective']:.6f} |",
        "",
        SCALING_POINTER,
        "",
        COMPILE_POINTER,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "performance.md")
        with open(path, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
