"""Several processes fit one model together, each holding its own rows; the fit is compared with one process
fitting all rows.

    python benchmarks/multihost.py --processes 2 [--rows 200000] [--chunk 16384]

Starts N local processes joined by ``hme.distributed.initialize`` (JAX's distributed runtime, CPU collectives
through gloo). Each generates the same simulated data (a depth-2 softmax/Gaussian HME on 5 inputs, float64),
keeps its contiguous block of rows, and runs ``hme.fit_em_streaming`` on it: the first pass, the start's
subsample and every pass's moments are reduced over the processes. A separate process fits all rows alone. The
last line says whether the two agree ("agree", or "differ": relative log-likelihood difference below 1e-8 and
parameters within 1e-6) and gives the largest differences; the exit status is 0 only when they agree.

On a cluster, run the worker part in every process with the coordinator's address instead of 127.0.0.1 (see
:mod:`hme.distributed`): under SLURM ``srun -n N python my_fit.py`` with ``hme.distributed.initialize()`` (no
arguments) in ``my_fit.py``; on Kubernetes an indexed Job whose pods call
``hme.distributed.initialize("<job-0 address>:12355", N, int(os.environ["JOB_COMPLETION_INDEX"]))``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

P, DEPTH = 5, 2


def data(rows: int, seed: int):
    import hme
    from hme.simulate import random_truth, sample

    spec = hme.make_spec(P, depth=DEPTH)
    rng = np.random.default_rng(seed)
    X, y = sample(spec, random_truth(spec, rng), rows, rng)
    return spec, X, y


def worker(rank: int, n_proc: int, port: int, rows: int, chunk: int, seed: int) -> None:
    import jax

    if n_proc > 1:
        import hme.distributed

        hme.distributed.initialize(f"127.0.0.1:{port}", n_proc, rank)
    jax.config.update("jax_enable_x64", True)
    import hme

    spec, X, y = data(rows, seed)
    lo, hi = rank * rows // n_proc, (rank + 1) * rows // n_proc
    t0 = time.perf_counter()
    res = hme.fit_em_streaming(spec, X[lo:hi], y[lo:hi], chunk_size=chunk, random_state=seed)
    flat = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(res.params)])
    if rank == 0:
        print("RESULT " + json.dumps(dict(log_likelihood=res.log_likelihood, objective=res.objective,
                                          n_iter=res.n_iter, seconds=time.perf_counter() - t0,
                                          params=flat.tolist())), flush=True)
    if n_proc > 1:
        jax.distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n_proc: int, rows: int, chunk: int, seed: int, timeout: float) -> dict:
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(r), "--processes", str(n_proc), "--port",
                               str(port), "--rows", str(rows), "--chunk", str(chunk), "--seed", str(seed)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in range(n_proc)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode:
            raise RuntimeError(f"a worker failed (exit {p.returncode}):\n{err[-3000:]}")
    line = [ln for ln in outs[0][0].splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--chunk", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker is not None:
        worker(a.worker, a.processes, a.port, a.rows, a.chunk, a.seed)
        return 0
    many = launch(a.processes, a.rows, a.chunk, a.seed, a.timeout)
    one = launch(1, a.rows, a.chunk, a.seed, a.timeout)
    rel = abs(many["log_likelihood"] - one["log_likelihood"]) / abs(one["log_likelihood"])
    dpar = float(np.max(np.abs(np.asarray(many["params"]) - np.asarray(one["params"]))))
    print(f"{a.processes} processes: log-likelihood {many['log_likelihood']:.10f}, {many['n_iter']} passes, "
          f"{many['seconds']:.1f} s")
    print(f"1 process:   log-likelihood {one['log_likelihood']:.10f}, {one['n_iter']} passes, {one['seconds']:.1f} s")
    agree = rel < 1e-8 and dpar < 1e-6
    print(f"{a.processes} processes and one process {'agree' if agree else 'differ'}: largest difference "
          f"{rel:.1e} (relative log-likelihood), {dpar:.1e} (parameters)")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
