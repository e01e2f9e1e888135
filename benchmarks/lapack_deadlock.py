"""Minimal reproducer: two batched LAPACK solves in one compiled program hang jaxlib 0.10.x on the CPU.

Upstream: jax-ml/jax#36927 (batched solve on CPU regressed in 0.10.0), jax-ml/jax#39292 (batched eigh corrupts
the heap). Cause: jax commit bfd9e1fbd3 (first released in 0.10.0) runs the batch of a LAPACK custom call in
chunks on XLA's intra-op thread pool and blocks a pool thread on ``absl::BlockingCounter::Wait`` until they are
done. Two such calls that XLA runs concurrently can occupy every pool thread with waiters, and the chunks they
wait for never start. Fixed upstream by jax commit 859992407d (2026-07-21), which is not in 0.11.0.

Each case runs in a fresh subprocess under a timeout, so a hang is reported, not suffered::

    python benchmarks/lapack_deadlock.py                 # jnp.linalg vs hme.batched_linalg, this jaxlib
    python benchmarks/lapack_deadlock.py --cpus 0        # also pinned to one core (taskset)

Measured on a 2-core machine (20 calls each, 60 s timeout): jaxlib 0.9.2 finishes (4.3 s); 0.10.0, 0.10.1
and 0.10.2 hang with ``jnp.linalg.solve``; ``hme.batched_linalg.solve_psd`` finishes on all of them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

CASE = r"""
import sys, time
import numpy as np
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
which, size, batch, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if which == "jnp.linalg":
    solve = lambda a, b: jnp.linalg.solve(a, b)
else:
    from hme import batched_linalg
    solve = batched_linalg.solve_psd
f = jax.jit(lambda A, B, C, D: (solve(A, B), solve(C, D)))
r = np.random.default_rng(0)
A = r.normal(size=(batch, size, size)); A = A @ A.transpose(0, 2, 1) + size * np.eye(size)
B = r.normal(size=(batch, size, 1))
t = time.perf_counter()
for _ in range(reps):
    x, _ = jax.block_until_ready(f(A, B, A + 1.0, B))
err = float(np.max(np.abs(np.asarray(x) - np.linalg.solve(A, B))))
print(f"{time.perf_counter() - t:.2f} {err:.1e}")
"""


def run_case(which: str, size: int, batch: int, reps: int, timeout: float, cpus: str | None) -> tuple[str, str]:
    cmd = [sys.executable, "-c", CASE, which, str(size), str(batch), str(reps)]
    if cpus is not None:
        if shutil.which("taskset") is None:
            return "skipped", "taskset not found"
        cmd = ["taskset", "-c", cpus] + cmd
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu")
        )
    except subprocess.TimeoutExpired:
        return "HANG", f"no result within {timeout:.0f} s"
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or [""]
        return f"CRASH rc={out.returncode}", tail[0][:80]
    seconds, err = out.stdout.split()
    return "ok", f"{seconds} s, max error {err}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=585, help="matrix size (585: digits, 9 classes x 65 columns)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--cpus", default=None, help="also run pinned to these CPUs (taskset list, e.g. 0)")
    ap.add_argument("--only", choices=["jnp.linalg", "hme"], default=None)
    args = ap.parse_args(argv)
    import jax
    import jaxlib

    print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, {os.cpu_count()} CPUs; "
          f"two batched ({args.batch}, {args.size}, {args.size}) solves per call, {args.reps} calls")
    print(f"{'kernel':<12} {'cpus':<6} {'result':<14} detail")
    hme_ok = True
    for cpus in [None] + ([args.cpus] if args.cpus is not None else []):
        for which in ["jnp.linalg", "hme"]:
            if args.only and which != args.only:
                continue
            t0 = time.perf_counter()
            status, detail = run_case(which, args.size, args.batch, args.reps, args.timeout, cpus)
            print(
                f"{which:<12} {cpus or 'all':<6} {status:<14} {detail} (wall {time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            if which == "hme" and status != "ok":
                hme_ok = False
    print("hme.batched_linalg: " + ("finished every case" if hme_ok else "FAILED"))
    return 0 if hme_ok else 1


if __name__ == "__main__":
    sys.exit(main())
