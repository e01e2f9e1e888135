"""hme against R's flexmix on the K = 4 softmax-gated mixture of linear experts (``../shared/anchors.md`` §4).

One run, same data for both: R simulates the data with the published script (``set.seed(1)``), fits
``flexmix(y ~ x1 + x2, k = 4, concomitant = FLXPmultinom(~ x1 + x2))`` and ``stepFlexmix(k = 2:5, nrep = 3)``;
Python reads the same CSV and fits ``HMERegressor(depth=1, branching=4)`` and ``HMESelector`` over branching 2–5,
both with ``alpha=0, gate_alpha=0``: flexmix maximises the plain likelihood, and hme's default ridges (which pull
each expert's slopes towards the pooled fit) cost about 70 nats of log-likelihood on this problem.
Printed per method: CPU seconds (user + system of the process, as R's ``system.time``), wall seconds, EM iterations,
log-likelihood and BIC, and the ratios flexmix / hme.

* first call, cold -- a fresh Python process with an empty persistent compilation cache (what the very first fit
  on a machine pays): import, compilation and fit;
* first call, warm -- another fresh process that finds the programs the cold one stored in hme's persistent cache
  (what every later session pays: hme turns the cache on by default, see ``hme.compile_cache``);
* steady state -- median of ``--reps`` further fits of the same shapes in that process (what a grid search,
  a bootstrap or a cross-validation pays per fit).

R and flexmix come from Debian packages; when ``Rscript`` or flexmix is missing and the script runs as root on a
Debian system it installs ``r-base-core r-cran-flexmix`` with apt-get (``--no-install`` to refuse). Usage:

    python benchmarks/bench_flexmix.py              # about 3 minutes, most of it stepFlexmix
    python benchmarks/bench_flexmix.py --skip-step  # without the model-selection comparison
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

R_SCRIPT = r"""
suppressMessages(library(flexmix))
args <- commandArgs(trailingOnly = TRUE); out <- args[1]; do_step <- args[2] == "1"
set.seed(1); n <- 10000; K <- 4
x1 <- rnorm(n); x2 <- rnorm(n); X <- cbind(1, x1, x2)
G <- cbind(0, c(0.5, 2, 0), c(-0.5, 0, 2), c(0, -2, -2))
P <- exp(X %*% G); P <- P / rowSums(P)
z <- apply(P, 1, function(p) sample.int(K, 1, prob = p))
B <- rbind(c(2, -2, 0, 4), c(1, -1, 0.5, 0), c(0, 1, -1, 2))
S <- c(0.5, 1, 0.3, 0.8)
y <- rowSums(X * t(B[, z])) + rnorm(n, 0, S[z])
d <- data.frame(y, x1, x2)
write.csv(d, file.path(out, "data.csv"), row.names = FALSE)
cpu <- function(t) unname(t["user.self"] + t["sys.self"])
set.seed(2)
t <- system.time(f <- flexmix(y ~ x1 + x2, data = d, k = K, concomitant = FLXPmultinom(~ x1 + x2)))
res <- list(fit = list(cpu = cpu(t), wall = unname(t["elapsed"]), iter = f@iter, loglik = as.numeric(logLik(f)),
                       bic = BIC(f), k = f@k, version = as.character(packageVersion("flexmix")),
                       r = paste(R.version$major, R.version$minor, sep = ".")))
if (do_step) {
  set.seed(3)
  t <- system.time(s <- stepFlexmix(y ~ x1 + x2, data = d, k = 2:5, nrep = 3, verbose = FALSE,
                                    concomitant = FLXPmultinom(~ x1 + x2)))
  b <- getModel(s, "BIC")
  res$step <- list(cpu = cpu(t), wall = unname(t["elapsed"]), k = b@k, bic = BIC(b), loglik = as.numeric(logLik(b)),
                   bics = as.numeric(BIC(s)), ks = as.integer(s@k))
}
flat <- unlist(lapply(res, function(g) sapply(g, function(v) paste(format(v, digits = 12), collapse = ","))))
writeLines(paste(names(flat), flat), file.path(out, "r.txt"))
"""

PY_WORKER = r"""
import json, os, sys, time, warnings
import numpy as np
t_wall, t_cpu = time.perf_counter(), time.process_time()
import hme
from hme import HMERegressor, HMESelector
out, reps, do_step, first_only = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"
d = np.loadtxt(os.path.join(out, "data.csv"), delimiter=",", skiprows=1)
y, X = d[:, 0], d[:, 1:]
import_cpu, import_wall = time.process_time() - t_cpu, time.perf_counter() - t_wall

def fit(seed):
    est = HMERegressor(depth=1, branching=4, gate="softmax", n_init=N_INIT, init_params=INIT, random_state=seed,
                       max_iter=500, alpha=0, gate_alpha=0)
    c, w = time.process_time(), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return est, time.process_time() - c, time.perf_counter() - w

CONFIGS = [(c.split(":")[0], int(c.split(":")[1])) for c in os.environ["HME_BENCH_CONFIGS"].split(",")]
res = {"fit": {}}
for i, (INIT, N_INIT) in enumerate(CONFIGS):
    est, c1, w1 = fit(0)
    if i == 0:  # the first fit of the process: import + compilation + fit
        res["first"] = {"cpu": c1 + import_cpu, "wall": w1 + import_wall, "fit_cpu": c1, "fit_wall": w1,
                        "config": f"init={INIT}, n_init={N_INIT}", "cache": hme.compile_cache.directory()}
        if first_only:
            json.dump(res, open(os.path.join(out, "py_warm.json"), "w"))
            sys.exit(0)
    cs, ws, lls, its = [], [], [], []
    for r in range(reps):
        e, c, w = fit(r + 1)
        cs.append(c); ws.append(w); lls.append(float(e.log_likelihood(X, y).sum())); its.append(e.n_iter_)
    ll = float(est.log_likelihood(X, y).sum())
    res["fit"][f"init={INIT}, n_init={N_INIT}"] = {"config": f"init={INIT}, n_init={N_INIT}",
                          "cpu": float(np.median(cs)), "wall": float(np.median(ws)), "loglik": ll, "bic": est.bic(X, y),
                          "iter": int(est.n_iter_), "loglik_min_over_seeds": min(lls + [ll]), "n_init": N_INIT,
                          "lls": lls + [ll], "version": hme.__version__}
if do_step:
    def select():
        sel = HMESelector(HMERegressor(max_iter=500, alpha=0, gate_alpha=0), depth=(1,), branching=(2, 3, 4, 5),
                          gate=("softmax",), n_init=3, random_state=0)
        c, w = time.process_time(), time.perf_counter()
        sel.fit(X, y)
        return sel, time.process_time() - c, time.perf_counter() - w
    sel, c, w = select()  # first: compiles four programs
    sel2, c2, w2 = select()
    res["step"] = {"first_cpu": c, "first_wall": w, "cpu": c2, "wall": w2,
                   "k": int(sel.best_params_["branching"]), "bic": float(sel.results_["bic"][sel.best_index_]),
                   "bics": [float(b) for b in sel.results_["bic"]]}
json.dump(res, open(os.path.join(out, "py.json"), "w"))
"""


def ensure_r(allow_install: bool) -> bool:
    """True when Rscript with flexmix is available, installing the Debian packages if allowed and possible."""

    def ok():
        if shutil.which("Rscript") is None:
            return False
        return subprocess.run(["Rscript", "-e", "library(flexmix)"], capture_output=True).returncode == 0

    if ok():
        return True
    if not allow_install or shutil.which("apt-get") is None or os.geteuid() != 0:
        print("R with flexmix is missing; install the Debian packages r-base-core r-cran-flexmix", file=sys.stderr)
        return False
    print("installing r-base-core r-cran-flexmix with apt-get ...", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "r-base-core", "r-cran-flexmix"],
                   env=env, check=False)
    return ok()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="steady-state fits (median reported)")
    ap.add_argument("--skip-step", action="store_true", help="skip stepFlexmix / HMESelector")
    ap.add_argument("--no-install", action="store_true", help="never call apt-get")
    ap.add_argument("--configs", default="kmeans:1,kmeans:3,random:1,kmeans_xy:1",
                    help="hme configurations init_params:n_init, comma-separated (flexmix: one random start)")
    ap.add_argument("--json", help="also write all figures to this file")
    args = ap.parse_args(argv)
    if not ensure_r(not args.no_install):
        return 2
    step = "0" if args.skip_step else "1"
    with tempfile.TemporaryDirectory() as out:
        with open(os.path.join(out, "bench.R"), "w") as fh:
            fh.write(R_SCRIPT)
        print("running flexmix ...", file=sys.stderr)
        subprocess.run(["Rscript", os.path.join(out, "bench.R"), out, step], check=True)
        r = _read_r(os.path.join(out, "r.txt"))
        print("running hme (fresh process, empty compilation cache) ...", file=sys.stderr)
        # hme's own default cache set-up (size cap, file lock), pointed at an empty directory
        env = dict(os.environ, HME_COMPILATION_CACHE=os.path.join(out, "jax_cache"), HME_BENCH_CONFIGS=args.configs)
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        subprocess.run([sys.executable, "-c", PY_WORKER, out, str(args.reps), step, "0"], check=True, env=env)
        print("running hme's first fit again (fresh process, warm compilation cache) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-c", PY_WORKER, out, "0", "0", "1"], check=True, env=env)
        p = json.load(open(os.path.join(out, "py.json")))
        p["first_warm"] = json.load(open(os.path.join(out, "py_warm.json")))["first"]
    _report(r, p, args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"flexmix": r, "hme": p}, fh, indent=2)
    return 0


def _read_r(path: str) -> dict:
    """Lines 'group.key value' written by the R script -> {'group': {'key': value}} (numbers parsed)."""
    out: dict = {}
    for line in open(path):
        key, _, value = line.strip().partition(" ")
        head, _, tail = key.partition(".")
        try:
            v = [float(x) for x in value.split(",")]
            v = v[0] if len(v) == 1 else v
        except ValueError:
            v = value
        out.setdefault(head, {})[tail] = v
    return out


def _report(r, p, args):
    rf = r["fit"]
    fits = list(p["fit"].values())
    print(
        f"\nK = 4 softmax-gated linear experts, n = 10000 (flexmix {rf['version']} on R {rf['r']}; hme "
        f"{fits[0]['version']}; "
        "flexmix fits from one random start; hme from n_init starts of the given init, the best kept)\n"
    )
    print(f"{'method':50s} {'CPU s':>8s} {'wall s':>8s} {'iter':>5s} {'log-lik':>12s} {'BIC':>11s} {'CPU ratio':>9s}")
    print(
        f"{'flexmix (one fit)':50s} {rf['cpu']:8.3f} {rf['wall']:8.3f} {int(rf['iter']):5d} {rf['loglik']:12.3f} "
        f"{rf['bic']:11.2f} {1.0:9.1f}"
    )
    for key, label in (("first", "cold cache"), ("first_warm", "warm cache")):
        fp = p[key]
        print(f"{'hme first call, ' + label + ' (import+compile+fit)':50s} {fp['cpu']:8.3f} {fp['wall']:8.3f} "
              f"{'-':>5s} {'-':>12s} {'-':>11s} {rf['cpu'] / fp['cpu']:9.1f}")
    for f in fits:
        name = f"hme {f['config']} (median of {args.reps})"
        print(
            f"{name:50s} {f['cpu']:8.3f} {f['wall']:8.3f} {f['iter']:5d} {f['loglik']:12.3f} {f['bic']:11.2f} "
            f"{rf['cpu'] / f['cpu']:9.1f}"
        )
    print(f"\nfirst call ({p['first']['config']}), fresh process: cold cache {p['first']['cpu']:.2f} s CPU, warm "
          f"cache {p['first_warm']['cpu']:.2f} s CPU ({p['first']['cpu'] / p['first_warm']['cpu']:.1f}x less)")
    for key, label in (("first", "cold"), ("first_warm", "warm")):
        fp = p[key]
        print(f"  {label}: import {fp['cpu'] - fp['fit_cpu']:.2f} s + first fit {fp['fit_cpu']:.2f} s CPU; "
              f"flexmix / first fit alone {rf['cpu'] / fp['fit_cpu']:.1f}x")
    print("targets (issue 16): steady-state CPU ratio >= 100, first-call ratio >= 3, log-likelihood >= flexmix's")
    for f in fits:
        reached = sum(l >= rf["loglik"] - 1.0 for l in f["lls"])
        print(
            f"{f['config']}: log-lik - flexmix {f['loglik'] - rf['loglik']:+.3f} (seed 0); {reached} of "
            f"{len(f['lls'])} seeds "
            f"within 1 of flexmix's log-likelihood or above; worst {f['loglik_min_over_seeds'] - rf['loglik']:+.3f}"
        )
    if "step" in r and "step" in p:
        rs, ps = r["step"], p["step"]
        print("\nmodel selection over K = 2..5 with 3 starts each, by BIC")
        print(f"{'method':42s} {'CPU s':>8s} {'wall s':>8s} {'K':>3s} {'BIC':>11s}")
        print(
            f"{'stepFlexmix(k = 2:5, nrep = 3)':42s} {rs['cpu']:8.2f} {rs['wall']:8.2f} {int(rs['k']):3d} "
            f"{rs['bic']:11.2f}"
        )
        print(
            f"{'HMESelector first call (4 compilations)':42s} {ps['first_cpu']:8.2f} {ps['first_wall']:8.2f} "
            f"{ps['k']:3d} {ps['bic']:11.2f}"
        )
        print(f"{'HMESelector again (compiled)':42s} {ps['cpu']:8.2f} {ps['wall']:8.2f} {ps['k']:3d} {ps['bic']:11.2f}")
        print(
            f"\nstepFlexmix / HMESelector CPU time: first {rs['cpu'] / ps['first_cpu']:.1f}x, compiled "
            f"{rs['cpu'] / ps['cpu']:.1f}x"
        )


if __name__ == "__main__":
    sys.exit(main())
