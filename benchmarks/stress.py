"""Stress harness: many random fits, each under a watchdog in a worker process; counts hangs, crashes, errors.

Fits are drawn at random over the estimators (regressor, classifier with 2-20 classes, Poisson regressor,
selector, gradient solver, Bayesian NUTS/SVI), gates, depths, branchings, dtypes, ``n_init``, feature counts up to
100 and sample sizes from 2 to 1e5. A worker process runs fits one at a time; the parent waits for each result
and replaces the worker when it hangs or dies (signal). A hang is a worker that uses no CPU for ``--stall``
seconds (a deadlock like issue #10's, which sat at 0% CPU) or has not answered after ``--timeout`` seconds.
Outcomes:

* ``ok`` -- the fit returned and every prediction is finite;
* ``clear error`` -- ``ValueError``/``TypeError`` raised by hme's own validation (e.g. fewer samples than leaves);
* ``unexpected`` -- any other exception, or one raised from inside a dependency;
* ``non-finite`` -- the fit returned but a prediction, probability or log-likelihood is NaN/inf;
* ``hang`` / ``crash`` -- stalled or over the time limit / the worker died.

Acceptance: unexpected, non-finite, hang and crash are all 0::

    python benchmarks/stress.py --fits 300 --out docs/stress.md     # full (about an hour on 2 cores)
    python benchmarks/stress.py --fits 12 --max-n 3000              # small; run by the test suite
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
import traceback

OUTCOMES = ["ok", "clear error", "unexpected", "non-finite", "hang", "crash"]
ESTIMATORS = ["regressor", "classifier", "poisson", "selector", "gradient", "bayes"]
#: Draw weights of the estimators (the Bayesian and selector fits are the slowest).
WEIGHTS = [0.3, 0.3, 0.12, 0.06, 0.14, 0.08]


def draw_config(rng, max_n: int) -> dict:
    """One random fit. Sizes are log-uniform; large n comes with fewer features and iterations."""
    import numpy as np

    est = str(rng.choice(ESTIMATORS, p=WEIGHTS))
    n = int(np.exp(rng.uniform(np.log(2), np.log(max_n))))
    d = int(rng.choice([1, 2, 3, 5, 10, 30, 100]))
    while n * d > 2_000_000 and d > 1:
        d //= 3
    gate = str(rng.choice(["softmax", "laplace"]))  # Gaussian gates are a core-only family for now
    depth = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
    branching = int(rng.choice([2, 3, 4], p=[0.6, 0.25, 0.15]))
    cfg = dict(
        estimator=est, n=n, d=d, gate=gate, depth=depth, branching=branching,
        dtype=str(rng.choice(["float32", "float64"])), n_init=int(rng.choice([1, 2, 3])),
        max_iter=int(rng.choice([20, 50, 100])), classes=int(rng.choice([2, 3, 5, 10, 20])),
        scale=float(10 ** rng.uniform(-3, 3)), seed=int(rng.integers(2**31)),
        weights=str(rng.choice(["none", "uniform", "zeros"], p=[0.7, 0.2, 0.1])),
    )
    if est == "bayes":
        cfg.update(n=min(n, 300), d=min(d, 3), depth=1, method=str(rng.choice(["nuts", "svi"])))
    if est == "selector":
        cfg.update(n=min(n, 5000), d=min(d, 10))
    if est == "classifier":
        cfg["d"] = min(cfg["d"], 100)
    return cfg


def make_data(cfg):
    import numpy as np

    rng = np.random.default_rng(cfg["seed"])
    n, d = cfg["n"], cfg["d"]
    X = rng.normal(size=(n, d)) * cfg["scale"]
    if d > 1 and rng.random() < 0.2:
        X[:, -1] = X[:, 0]  # a duplicated column
    if rng.random() < 0.1:
        X[:, 0] = 1.0  # a constant column
    X = X.astype(cfg["dtype"])
    z = X[:, 0] / cfg["scale"]
    if cfg["estimator"] == "classifier" or (cfg["estimator"] == "bayes" and rng.random() < 0.5):
        C = min(cfg["classes"], max(2, n))
        y = np.floor((np.tanh(z) + 1) / 2 * C + rng.normal(scale=0.3, size=n)).clip(0, C - 1).astype(int)
        if len(np.unique(y)) < 2 and n >= 2:
            y[: n // 2 + 1] = 0
            y[-1] = 1
        cfg["task"] = "classification"
    elif cfg["estimator"] == "poisson":
        y = rng.poisson(np.exp(np.clip(np.sin(z), -3, 3))).astype(float)
        cfg["task"] = "poisson"
    else:
        y = (np.where(z > 0, 2 * z, -z) + 0.1 * rng.normal(size=n)) * cfg["scale"]
        cfg["task"] = "regression"
    w = None
    if cfg["weights"] == "uniform":
        w = rng.uniform(0, 3, size=n)
    elif cfg["weights"] == "zeros":
        w = (rng.random(n) < 0.7).astype(float)
    return X, y, w


def build(cfg):
    from hme import BayesianHMEClassifier, BayesianHMERegressor, HMEClassifier, HMERegressor, HMESelector

    common = dict(depth=cfg["depth"], branching=cfg["branching"], gate=cfg["gate"], n_init=cfg["n_init"],
                  random_state=cfg["seed"] % 1000)
    est = cfg["estimator"]
    if est == "regressor":
        return HMERegressor(max_iter=cfg["max_iter"], **common)
    if est == "classifier":
        return HMEClassifier(max_iter=cfg["max_iter"], **common)
    if est == "poisson":
        return HMERegressor(expert="poisson", max_iter=cfg["max_iter"], **common)
    if est == "gradient":
        return HMERegressor(solver="gradient", max_iter=cfg["max_iter"], **common)
    if est == "selector":
        return HMESelector(depth=(1, 2), branching=(2,), gate=(cfg["gate"],), n_init=1, random_state=0)
    kw = dict(depth=1, gate=cfg["gate"], method=cfg["method"], num_warmup=50, num_samples=50, num_chains=1,
              svi_steps=200, n_init=1, random_state=0)
    return BayesianHMEClassifier(**kw) if cfg["task"] == "classification" else BayesianHMERegressor(**kw)


def _is_ours(exc) -> bool:
    """A ValueError/TypeError raised by hme's own code (its innermost frame is in hme or scikit-learn's
    validation), not from inside JAX, NumPy or numpyro."""
    if not isinstance(exc, (ValueError, TypeError)):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    inner = frames[-1].filename.replace(os.sep, "/")
    return any(part in inner for part in ("/hme/", "/estimators/", "/sklearn/utils/"))


def run_one(cfg) -> tuple[str, str]:
    import warnings

    import numpy as np

    X, y, w = make_data(cfg)
    est = build(cfg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if w is not None and cfg["estimator"] not in ("bayes",):
                est.fit(X, y, sample_weight=w)
            else:
                est.fit(X, y)
            outputs = [np.asarray(est.predict(X), float)]
            if hasattr(est, "predict_proba"):
                proba = np.asarray(est.predict_proba(X), float)
                outputs.append(proba)
                if not (np.all(proba >= 0) and np.all(proba <= 1) and np.allclose(proba.sum(1), 1, atol=1e-4)):
                    return "non-finite", "predict_proba is not a probability vector"
            if hasattr(est, "score") and cfg["estimator"] != "bayes":
                outputs.append(np.asarray([est.score(X, y)], float))
    except Exception as exc:  # classified, never re-raised: the harness counts them
        kind = "clear error" if _is_ours(exc) else "unexpected"
        return kind, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    if not all(np.all(np.isfinite(o)) for o in outputs):
        return "non-finite", "NaN/inf in predictions"
    return "ok", ""


def _worker(conn):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    jax.config.update("jax_enable_x64", True)
    while True:
        cfg = conn.recv()
        if cfg is None:
            return
        if "self_check" in cfg:  # the watchdog's own test: a deadlock (sleep at 0% CPU) or a crash (abort)
            time.sleep(cfg["self_check"]) if cfg["self_check"] != "abort" else os.abort()
        t = time.perf_counter()
        try:
            outcome, detail = run_one(cfg)
        except BaseException as exc:  # noqa: BLE001 - a harness bug must not look like a hang
            outcome, detail = "unexpected", f"harness: {type(exc).__name__}: {exc}"
        conn.send((outcome, detail, time.perf_counter() - t))


class Worker:
    def __init__(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system, all threads) the worker has used, from /proc; None where unavailable."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def run(self, cfg, timeout, stall):
        """(outcome, detail, seconds). A hang is a worker that uses no CPU for ``stall`` seconds (a deadlock, as
        in issue #10) or has not answered after ``timeout`` seconds (a fit too slow, or a busy loop)."""
        self.conn.send(cfg)
        t0 = time.perf_counter()
        last_cpu, last_change = self.cpu_seconds(), t0
        while self.proc.is_alive():
            if self.conn.poll(1.0):
                try:
                    return self.conn.recv()
                except EOFError:
                    break
            now = time.perf_counter()
            cpu = self.cpu_seconds()
            if cpu is not None and last_cpu is not None and cpu > last_cpu + 0.05:
                last_cpu, last_change = cpu, now
            if now - last_change > stall:
                self.kill()
                return "hang", f"no CPU progress for {stall:.0f} s (a deadlock), after {now - t0:.0f} s", now - t0
            if now - t0 > timeout:
                self.kill()
                return "hang", f"no result within {timeout:.0f} s (still computing)", now - t0
        if self.conn.poll(0):
            try:
                return self.conn.recv()
            except EOFError:
                pass
        self.proc.join(10)
        return "crash", f"worker died with exit code {self.proc.exitcode}", float("nan")

    def kill(self):
        self.proc.kill()
        self.proc.join(10)

    def close(self):
        if self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(30)
            if self.proc.is_alive():
                self.kill()


def describe(cfg):
    keys = ["estimator", "n", "d", "gate", "depth", "branching", "dtype", "n_init", "weights"]
    extra = f" C={cfg['classes']}" if cfg["estimator"] == "classifier" else ""
    return " ".join(f"{k}={cfg[k]}" for k in keys) + extra


def stress(n_fits: int, seed: int, max_n: int, timeout: float, workers: int, log=print, on_result=None,
           stall: float = 120.0, done=None):
    """Run the fits; ``done`` maps fit indices to results recorded by an earlier run (not run again)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    configs = [draw_config(rng, max_n) for _ in range(n_fits)]
    results = [None] * n_fits
    for i, r in (done or {}).items():
        if i < n_fits:
            results[i] = r
    pool = [Worker() for _ in range(workers)]
    pending = [i for i in range(n_fits) if results[i] is None][::-1]
    import concurrent.futures as cf

    def drive(slot):
        while True:
            try:
                i = pending.pop()
            except IndexError:
                return
            outcome, detail, secs = pool[slot].run(configs[i], timeout, stall)
            if outcome in ("hang", "crash"):
                pool[slot] = Worker()
            results[i] = (outcome, detail, secs)
            if on_result is not None:
                on_result(configs, results, i)
            log(
                f"[{sum(r is not None for r in results):>4}/{n_fits}] {outcome:<11} {secs:7.1f} s  "
                f"{describe(configs[i])}"
                + (f"  -- {detail}" if detail else "")
            )

    try:
        with cf.ThreadPoolExecutor(workers) as ex:
            list(ex.map(drive, range(workers)))
    finally:
        for w in pool:
            w.close()
    return configs, results


def table(configs, results) -> str:
    counts = collections.defaultdict(collections.Counter)
    for cfg, (outcome, _, _) in zip(configs, results, strict=True):
        counts[cfg["estimator"]][outcome] += 1
        counts["all"][outcome] += 1
    lines = ["| estimator | fits | " + " | ".join(OUTCOMES) + " |", "|---" * (len(OUTCOMES) + 2) + "|"]
    for est in ESTIMATORS + ["all"]:
        c = counts[est]
        lines.append(f"| {est} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES) + " |")
    return "\n".join(lines)


def write_markdown(path, argv, configs, results, t0, args):
    """The table of the fits done so far, written to ``path`` when given (a run cut short still leaves an honest
    partial table). Returns (summary line, failures, counts of clear errors)."""
    import numpy as np

    done = [(c, r) for c, r in zip(configs, results, strict=True) if r is not None]
    cs, rs = [c for c, _ in done], [r for _, r in done]
    secs = [r[2] for r in rs if r[0] in ("ok", "clear error")]
    summary = (
        f"{len(done)} of {args.fits} fits done, seed {args.seed}, n up to {args.max_n}, watchdog "
        f"{args.timeout:.0f} s (no CPU for {args.stall:.0f} s), {args.workers} worker(s), "
        f"{time.perf_counter() - t0:.0f} s wall in the last run; median fit "
        f"{np.median(secs) if secs else float('nan'):.1f} s"
    )
    bad = [(c, r) for c, r in done if r[0] in ("unexpected", "non-finite", "hang", "crash")]
    errors = collections.Counter(r[1] for r in rs if r[0] == "clear error")
    if path is None:
        return summary, bad, errors
    with open(path, "w") as f:
        f.write(
            "# Stress test\n\nWritten by `python benchmarks/stress.py "
            + " ".join(argv)
            + "`. Every fit's result, with "
            "the commit it ran on, is in `" + os.path.basename(os.path.splitext(path)[0]) + ".jsonl`; `--resume` keeps "
            "its ok / clear-error results and runs the rest.\n\n"
        )
        f.write(summary + ".\n\n" + table(cs, rs) + "\n")
        if errors:
            f.write("\nClear errors raised (invalid configurations for the data):\n\n")
            f.write("\n".join(f"- `{k}`: {v}" for k, v in errors.most_common()) + "\n")
        if bad:
            f.write(
                "\nFailures:\n\n"
                + "\n".join(f"- {r[0]}: {describe(c)} seed={c['seed']}: {r[1]}" for c, r in bad)
                + "\n"
            )
    return summary, bad, errors


def load_record(path: str, args) -> dict:
    """Results of an earlier run of the same draws, {index: (outcome, detail, seconds)}; only ok / clear error."""
    done = {}
    if os.path.exists(path):
        with open(path) as fh:
            for line in fh:
                r = json.loads(line)
                if r["seed"] == args.seed and r["max_n"] == args.max_n and r["outcome"] in ("ok", "clear error"):
                    done[r["index"]] = (r["outcome"], r["detail"], r["seconds"])
    return done


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fits", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-n", type=int, default=100_000)
    ap.add_argument("--timeout", type=float, default=1800.0, help="hard limit per fit, seconds")
    ap.add_argument("--stall", type=float, default=120.0, help="a worker using no CPU this long has hung, seconds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the table and the failures as Markdown here, and every "
                    "result as a JSON line to the same path with .jsonl")
    ap.add_argument("--resume", action="store_true", help="keep the ok / clear-error results already in the .jsonl "
                    "record of --out (same seed and --max-n) and run the rest; earlier failures run again")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    argv_list = list(argv) if argv is not None else sys.argv[1:]
    record = os.path.splitext(args.out)[0] + ".jsonl" if args.out else None
    done = load_record(record, args) if (args.resume and record) else {}
    if not args.resume and record and os.path.exists(record):
        os.remove(record)
    commit = _commit()

    def hook(configs, results, i):
        with open(record, "a") as fh:
            fh.write(json.dumps(dict(index=i, seed=args.seed, max_n=args.max_n, commit=commit,
                                     outcome=results[i][0], detail=results[i][1], seconds=results[i][2],
                                     fit=describe(configs[i]))) + "\n")
        write_markdown(args.out, argv_list, configs, results, t0, args)

    configs, results = stress(args.fits, args.seed, args.max_n, args.timeout, args.workers,
                              on_result=hook if args.out else None, stall=args.stall, done=done)
    summary, bad, errors = write_markdown(args.out, argv_list, configs, results, t0, args)
    print("\n" + summary + "\n\n" + table(configs, results))
    if errors:
        print("\nclear errors raised:\n" + "\n".join(f"  {k}: {v}" for k, v in errors.most_common()))
    for c, r in bad:
        print(f"FAILURE {r[0]}: {describe(c)} seed={c['seed']} -- {r[1]}")
    n_bad = len(bad)
    print(f"\nstress: {n_bad} failures (unexpected, non-finite, hang, crash) in {args.fits} fits")
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
