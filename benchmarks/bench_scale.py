"""Scale: streamed exact EM on a memmap larger than the chunk, online EM, and data parallelism, in one table.

    python benchmarks/bench_scale.py --rows 10000000 --out docs/scale.md

1. **Out of core.** ``--rows`` × 20 float32 rows drawn from a depth-2 softmax/Gaussian HME are written chunk by
   chunk to a ``.npy`` memmap (never whole in RAM). A fresh process fits ``HMERegressor(chunk_size=...)`` to the
   memmap and reports seconds per pass, passes, and the growth of its anonymous memory (``RssAnon``, sampled every
   20 ms, peak) over its value before the fit (estimator imported), against the data's size. The same model is
   fitted in memory to a uniform subsample of ``--subsample`` rows; the two fits' held-out log-likelihoods (per
   sample, on 100,000 fresh rows) and their gap to the truth's are printed side by side.
2. **Online EM.** ``--online-rows`` rows in batches of ``--batch`` through ``partial_fit`` (one pass), against a
   batch EM fit to the same rows: held-out log-likelihood per sample, the gap (target ≤ 0.02) and seconds.
3. **Devices.** The in-memory EM fit of ``--device-rows`` rows with ``devices=1`` and ``devices=2`` in fresh
   processes with ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (median of ``--repeats`` fits after a
   warm-up): the speed-up, as measured (two host devices share the CPU's cores), and the largest relative
   difference of the two fits' log-likelihoods.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

P, DEPTH = 20, 2
HELD_OUT = 100_000


def truth(seed: int):
    import hme
    from hme.simulate import random_truth

    spec = hme.make_spec(P, depth=DEPTH)
    return spec, random_truth(spec, np.random.default_rng(seed))


def write_memmap(path: str, rows: int, seed: int, block: int = 200_000) -> None:
    """X (rows, P) and y (rows,) float32 drawn from the truth, ``block`` rows at a time, as two .npy files."""
    from hme.simulate import sample

    spec, params = truth(seed)
    X = np.lib.format.open_memmap(path + "_X.npy", mode="w+", dtype=np.float32, shape=(rows, P))
    y = np.lib.format.open_memmap(path + "_y.npy", mode="w+", dtype=np.float32, shape=(rows,))
    rng = np.random.default_rng(seed + 1)
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        Xb, yb = sample(spec, params, stop - start, rng)
        X[start:stop], y[start:stop] = Xb, yb
    X.flush()
    y.flush()
    del X, y


def rss_anon() -> int:
    """This process's anonymous resident memory in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def held_out(seed: int):
    from hme.simulate import sample

    spec, params = truth(seed)
    return sample(spec, params, HELD_OUT, np.random.default_rng(seed + 2))


def mean_log_lik(model, X, y) -> float:
    return float(np.mean(model.log_likelihood(X, y))) if hasattr(model, "log_likelihood") else float("nan")


def measure_streamed(path: str, chunk: int, seed: int) -> dict:
    """In a fresh process: the streamed fit of the memmap, its passes, seconds and anonymous-memory growth over
    the process's memory once the estimator is imported (JAX's own start-up, at the fit's first array, counts)."""
    from hme import HMERegressor

    X = np.load(path + "_X.npy", mmap_mode="r")
    y = np.load(path + "_y.npy", mmap_mode="r")
    peak = [0]
    stop = threading.Event()

    def sample_memory():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.02)

    base = rss_anon()
    watcher = threading.Thread(target=sample_memory, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    model = HMERegressor(depth=DEPTH, chunk_size=chunk, random_state=seed).fit(X, y)
    seconds = time.perf_counter() - t0
    stop.set()
    watcher.join()
    peak[0] = max(peak[0], rss_anon())
    Xh, yh = held_out(seed)
    return dict(seconds=seconds, passes=len(model.pass_seconds_), pass_median=float(np.median(model.pass_seconds_[1:]
                if len(model.pass_seconds_) > 1 else model.pass_seconds_)), growth=peak[0] - base,
                data_bytes=int(X.nbytes + y.nbytes), held_out=mean_log_lik(model, Xh, yh),
                converged=bool(model.converged_), objective=float(model.lower_bound_))


def subsample_fit(path: str, rows: int, seed: int) -> dict:
    import hme

    X = np.load(path + "_X.npy", mmap_mode="r")
    y = np.load(path + "_y.npy", mmap_mode="r")
    idx = np.sort(np.random.default_rng(seed + 3).choice(X.shape[0], size=min(rows, X.shape[0]), replace=False))
    Xs, ys = np.asarray(X[idx]), np.asarray(y[idx])
    t0 = time.perf_counter()
    model = hme.HMERegressor(depth=DEPTH, random_state=seed).fit(Xs, ys)
    Xh, yh = held_out(seed)
    return dict(seconds=time.perf_counter() - t0, held_out=mean_log_lik(model, Xh, yh), rows=len(idx))


def truth_held_out(seed: int) -> float:
    from hme.model import log_likelihood

    spec, params = truth(seed)
    Xh, yh = held_out(seed)
    return float(np.mean(np.asarray(log_likelihood(spec, params, Xh.astype(np.float32), yh.astype(np.float32)))))


def online(rows: int, batch: int, seed: int) -> dict:
    import hme
    from hme.simulate import sample

    spec, params = truth(seed + 10)
    rng = np.random.default_rng(seed + 11)
    X, y = (a.astype(np.float32) for a in sample(spec, params, rows, rng))
    Xh, yh = (a.astype(np.float32) for a in sample(spec, params, HELD_OUT, rng))
    t0 = time.perf_counter()
    model = hme.HMERegressor(depth=DEPTH, random_state=seed)
    for start in range(0, rows, batch):
        model.partial_fit(X[start:start + batch], y[start:start + batch])
    t_online = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = hme.HMERegressor(depth=DEPTH, random_state=seed).fit(X, y)
    t_batch = time.perf_counter() - t0
    a, b = mean_log_lik(model, Xh, yh), mean_log_lik(full, Xh, yh)
    return dict(online=a, batch=b, gap=b - a, online_seconds=t_online, batch_seconds=t_batch, batches=model.n_batches_)


def devices_worker(rows: int, n_devices: int, repeats: int, seed: int) -> dict:
    import hme
    from hme.simulate import sample

    spec, params = truth(seed + 20)
    X, y = (a.astype(np.float32) for a in sample(spec, params, rows, np.random.default_rng(seed + 21)))
    kw = dict(depth=DEPTH, random_state=seed, devices=n_devices, n_candidates=1, max_iter=50, tol=0.0)
    hme.HMERegressor(**kw).fit(X, y)  # compile
    times, ll = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        m = hme.HMERegressor(**kw).fit(X, y)
        times.append(time.perf_counter() - t0)
        ll = m.log_likelihood_
    return dict(median=float(np.median(times)), log_likelihood=float(ll))


def in_fresh_process(task: str, *args, env=None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", task, json.dumps(args)], capture_output=True,
                         text=True, env={**os.environ, **(env or {})}, check=False)
    if out.returncode:
        raise RuntimeError(f"worker {task} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--subsample", type=int, default=1_000_000)
    ap.add_argument("--online-rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--device-rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="where the memmap goes (default: a temporary directory)")
    ap.add_argument("--out", default=None, help="write the table to this markdown file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="?", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        fn = {"streamed": measure_streamed, "devices": devices_worker}[a.worker]
        print(json.dumps(fn(*json.loads(a.args))))
        return
    lines = [f"# Scale (`python benchmarks/bench_scale.py --rows {a.rows} --chunk {a.chunk} --subsample {a.subsample} "
             f"--online-rows {a.online_rows} --batch {a.batch} --device-rows {a.device_rows}`)", ""]
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        path = os.path.join(tmp, "scale")
        t0 = time.perf_counter()
        write_memmap(path, a.rows, a.seed)
        gen = time.perf_counter() - t0
        s = in_fresh_process("streamed", path, a.chunk, a.seed)
        sub = subsample_fit(path, a.subsample, a.seed)
    t_ll = truth_held_out(a.seed)
    lines += ["## Out of core: exact EM streamed from a float32 memmap", "",
              "| rows | data | chunk | passes | s / pass (median) | fit s | anon. memory growth | growth / data "
              "| held-out ll / sample | truth's | converged |",
              "|---|---|---|---|---|---|---|---|---|---|---|",
              f"| {a.rows:,} × {P} | {s['data_bytes'] / 2**20:,.0f} MiB | {a.chunk:,} | {s['passes']} | "
              f"{s['pass_median']:.2f} | {s['seconds']:.1f} | {s['growth'] / 2**20:,.1f} MiB | "
              f"{s['growth'] / s['data_bytes']:.1%} | {s['held_out']:.4f} | {t_ll:.4f} | {s['converged']} |", "",
              f"In-memory fit of a uniform {sub['rows']:,}-row subsample: held-out {sub['held_out']:.4f} per sample "
              f"({sub['seconds']:.1f} s); the streamed fit of every row is {s['held_out'] - sub['held_out']:+.4f} "
              f"from it and {s['held_out'] - t_ll:+.4f} from the truth. Writing the memmap took {gen:.1f} s.", ""]
    o = online(a.online_rows, a.batch, a.seed)
    lines += ["## Online EM (`partial_fit`, one pass)", "",
              "| rows | batch | batches | online held-out ll | batch EM held-out ll | gap (target ≤ 0.02) | online s "
              "| batch EM s |", "|---|---|---|---|---|---|---|---|",
              f"| {a.online_rows:,} | {a.batch:,} | {o['batches']} | {o['online']:.4f} | {o['batch']:.4f} | "
              f"{o['gap']:.4f} | {o['online_seconds']:.1f} | {o['batch_seconds']:.1f} |", ""]
    flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    one = in_fresh_process("devices", a.device_rows, 1, a.repeats, a.seed, env=flags)
    two = in_fresh_process("devices", a.device_rows, 2, a.repeats, a.seed, env=flags)
    rel = abs(one["log_likelihood"] - two["log_likelihood"]) / abs(one["log_likelihood"])
    lines += ["## Devices (in-memory EM, 50 iterations, forced host devices)", "",
              "| rows | 1 device s | 2 devices s | speed-up | relative log-lik difference |", "|---|---|---|---|---|",
              f"| {a.device_rows:,} | {one['median']:.2f} | {two['median']:.2f} | {one['median'] / two['median']:.2f} "
              f"| {rel:.1e} |", "", f"Machine: {os.cpu_count()} CPU cores."]
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
