"""Scaling curves of one EM iteration (issue 16 item 4): time and peak memory against n, d, leaves and classes.

Four sweeps around one base problem (float32, softmax gates on all inputs, Newton gate steps, Gaussian linear
experts; binary trees), each point measured by ``bench_em.py --one`` in its own process (clean memory peaks):

* **n** -- 1e3 … 1e7 rows (``--max-n``), d = 20, 16 leaves;
* **d** -- 2 … 200 inputs, n = 1e5, 16 leaves;
* **leaves** -- 2 … 64 (depth 1 … 6), n = 1e5, d = 20;
* **classes** -- multinomial experts with 2 … 20 classes, n = 1e5, d = 20, 4 leaves.

Per point: seconds of one steady-state EM iteration (compiled; median of 5), its floor (the experts' weighted
Gram matrices, ``2·n·d²·leaves`` flops, times ``classes - 1`` for multinomial experts, at the matmul rate measured
here), the ratio, and the peak extra resident memory of a 5-iteration fit in units of size(X). Between neighbouring
points the local slope of log time on log n (or d, leaves, classes) is printed; the table marks where the cost
stops being linear in n (slope > 1.15) or grows faster than quadratically in d (slope > 2.15). Writes
``--out`` (Markdown) and ``--plot`` (PNG: time per iteration with the floor, and memory, per sweep).

    python benchmarks/bench_scaling.py --out docs/scaling.md --plot docs/scaling.png
    python benchmarks/bench_scaling.py --max-n 100000 --sweeps n,d      # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

#: (sweep name, the axis it varies, points, fixed settings n, d, depth, classes)
SWEEPS = {
    "n": ("rows n", [1_000, 10_000, 100_000, 1_000_000, 10_000_000], dict(d=20, depth=4, classes=0)),
    "d": ("inputs d", [2, 5, 10, 20, 50, 100, 200], dict(n=100_000, depth=4, classes=0)),
    "leaves": ("leaves", [2, 4, 8, 16, 32, 64], dict(n=100_000, d=20, classes=0)),
    "classes": ("classes", [2, 3, 5, 10, 20], dict(n=100_000, d=20, depth=2)),
}
#: local slopes above these mark where the cost stops being linear in n / at most quadratic in d
LINEAR_IN_N, QUADRATIC_IN_D = 1.15, 2.15


def point(sweep: str, value: int) -> dict:
    """The settings (n, d, depth, classes) of one point of ``sweep``."""
    fixed = dict(SWEEPS[sweep][2])
    if sweep == "leaves":
        fixed["depth"] = int(np.log2(value))
    else:
        fixed[sweep] = value
    return fixed


def measure(cfg: dict, rate: float, dtype: str) -> dict | None:
    """``bench_em.py --one`` for ``cfg`` in a fresh process; None (with the error printed) when it fails."""
    cmd = [sys.executable, os.path.join(HERE, "bench_em.py"), "--one", "--n", str(cfg["n"]), "--d", str(cfg["d"]),
           "--depth", str(cfg["depth"]), "--dtype", dtype, "--gate-solver", "newton", "--rate", str(rate),
           "--classes", str(cfg["classes"])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        print(f"  failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(line[0][7:])


def local_slopes(x, t) -> list[float]:
    """Slopes of log t on log x between neighbouring points (NaN where a point is missing)."""
    return [float(np.log(t[i + 1] / t[i]) / np.log(x[i + 1] / x[i])) for i in range(len(x) - 1)]


def table(sweep: str, xs, rows) -> list[str]:
    """Markdown rows of one sweep, with the local slope into each point and the marks."""
    label = SWEEPS[sweep][0]
    times = [r["iter_s"] if r else float("nan") for r in rows]
    slopes = [float("nan")] + local_slopes(xs, times)
    out = [f"| {label} | iteration s | floor s | × floor | slope in | peak extra memory / size(X) | compile s |",
           "|---|---|---|---|---|---|---|"]
    for x, r, s in zip(xs, rows, slopes, strict=True):
        if r is None:
            out.append(f"| {x:,} | failed | | | | | |")
            continue
        mark = ""
        if sweep == "n" and s > LINEAR_IN_N:
            mark = " **superlinear**"
        if sweep == "d" and s > QUADRATIC_IN_D:
            mark = " **above quadratic**"
        out.append(f"| {x:,} | {r['iter_s']:.4f} | {r['floor_s']:.4f} | {r['ratio']:.1f} | "
                   f"{'' if np.isnan(s) else f'{s:+.2f}'}{mark} | {r['mem_over_X']:.1f} | {r['compile_s']:.1f} |")
    return out


def summary(results: dict) -> list[str]:
    """One line per sweep: the range of × floor, the largest local slope, the memory range, and the marks."""
    out = []
    for sweep, (xs, rows) in results.items():
        ok = [(x, r) for x, r in zip(xs, rows, strict=True) if r]
        if len(ok) < 2:
            continue
        x = [p[0] for p in ok]
        slopes = local_slopes(x, [p[1]["iter_s"] for p in ok])
        k = int(np.argmax(slopes))
        ratios = [p[1]["ratio"] for p in ok]
        mem = [p[1]["mem_over_X"] for p in ok]
        line = (f"* {SWEEPS[sweep][0]}: {min(ratios):.1f}–{max(ratios):.1f} × the floor; largest local slope "
                f"{slopes[k]:+.2f} (from {x[k]:,} to {x[k + 1]:,}); peak extra memory {min(mem):.1f}–{max(mem):.1f} "
                "× size(X)")
        if sweep == "n":
            over = [f"{x[i]:,}→{x[i + 1]:,}" for i, s in enumerate(slopes) if s > LINEAR_IN_N]
            line += f"; superlinear: {', '.join(over) if over else 'nowhere in this range'}"
        if sweep == "d":
            over = [f"{x[i]:,}→{x[i + 1]:,}" for i, s in enumerate(slopes) if s > QUADRATIC_IN_D]
            line += f"; above quadratic: {', '.join(over) if over else 'nowhere in this range'}"
        out.append(line + ".")
    return out


def plot(results: dict, path: str) -> None:
    """Two rows of panels: time per iteration with the floor (log-log), and peak extra memory / size(X)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(4 * len(names), 7), squeeze=False)
    for j, sweep in enumerate(names):
        xs, rows = results[sweep]
        ok = [(x, r) for x, r in zip(xs, rows, strict=True) if r]
        if not ok:
            continue
        x = np.array([p[0] for p in ok], float)
        ax = axes[0, j]
        ax.loglog(x, [p[1]["iter_s"] for p in ok], "o-", label="EM iteration")
        ax.loglog(x, [p[1]["floor_s"] for p in ok], "k--", label="floor (expert Grams at matmul rate)")
        ax.set_xlabel(SWEEPS[sweep][0])
        ax.set_ylabel("seconds")
        ax.set_title(f"time per iteration vs {SWEEPS[sweep][0]}")
        ax.legend(fontsize=7)
        ax = axes[1, j]
        ax.semilogx(x, [p[1]["mem_over_X"] for p in ok], "s-")
        ax.axhline(4.0, color="k", ls=":", lw=1, label="4 × size(X) (target, plus O(n·leaves))")
        ax.set_xlabel(SWEEPS[sweep][0])
        ax.set_ylabel("peak extra memory / size(X)")
        ax.legend(fontsize=7)
        if sweep != "n":  # the swept values themselves as ticks (log axes label too densely otherwise)
            for a in axes[:, j]:
                a.minorticks_off()
                a.set_xticks(x)
                a.set_xticklabels([f"{int(v)}" for v in x])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweeps", default="n,d,leaves,classes")
    ap.add_argument("--max-n", type=int, default=10_000_000, help="largest n of the n sweep")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--json", default=None, help="also write the measurements here")
    ap.add_argument("--from-json", default=None, help="rewrite the report from saved measurements (no runs)")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as fh:
            saved = json.load(fh)
        return report(args, saved["head"], {k: tuple(v) for k, v in saved["results"].items()}, saved["command"])

    import jax
    import jax.numpy as jnp

    sys.path.insert(0, HERE)
    from bench_em import matmul_rate

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    rate = matmul_rate(jnp.float32 if args.dtype == "float32" else jnp.float64)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    head = (f"{platform.machine()}, {cores} of {os.cpu_count()} cores usable, jax {jax.__version__}, {args.dtype}; "
            f"matmul rate {rate:.1f} GFLOP/s")
    print(head, flush=True)
    results = {}
    for sweep in args.sweeps.split(","):
        xs = [x for x in SWEEPS[sweep][1] if sweep != "n" or x <= args.max_n]
        rows = []
        for x in xs:
            cfg = point(sweep, x)
            print(f"{sweep} = {x:,} ({cfg}) ...", flush=True)
            r = measure(cfg, rate, args.dtype)
            if r:
                print(f"  iteration {r['iter_s']:.4f} s, floor {r['floor_s']:.4f} s ({r['ratio']:.1f}x), memory "
                      f"{r['mem_over_X']:.1f} x size(X), compile {r['compile_s']:.1f} s", flush=True)
            rows.append(r)
        results[sweep] = (xs, rows)
    cmd = " ".join(["python benchmarks/bench_scaling.py"] + sys.argv[1:])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"head": head, "command": cmd, "results": results}, fh)
    report(args, head, results, cmd)


def report(args, head: str, results: dict, cmd: str) -> None:
    """Print the Markdown report and write it (``args.out``) and the plot (``args.plot``)."""
    lines = ["# Scaling of one EM iteration", "", f"Written by `{cmd}` ({head}).", "",
             "Base problem: softmax gates on all inputs (Newton steps), Gaussian linear experts, binary trees; "
             "each point in its own process. *slope in*: local slope of log time on log of the swept quantity from "
             f"the previous point; **superlinear** marks slope > {LINEAR_IN_N} in n, **above quadratic** slope > "
             f"{QUADRATIC_IN_D} in d. Floor: `2·n·d²·leaves` flops (× (classes − 1) for multinomial experts) at the "
             "matmul rate above.", ""] + summary(results) + [""]
    for sweep, (xs, rows) in results.items():
        fixed = ", ".join(f"{k} = {v:,}" for k, v in SWEEPS[sweep][2].items() if not (k == "classes" and v == 0))
        lines += [f"## Against {SWEEPS[sweep][0]} ({fixed})", ""] + table(sweep, xs, rows) + [""]
    if args.plot:
        plot(results, args.plot)
        lines += [f"![scaling curves]({os.path.basename(args.plot)})", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
