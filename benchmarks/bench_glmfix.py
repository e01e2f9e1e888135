"""Fixed effects (``shared_coef``) against flexmix's ``FLXMRglmfix`` on its own NPreg data, side by side.

R fits, on ``flexmix::NPreg`` (200 rows, two latent classes), with 10 random starts each (``set.seed(1)``):

* Gaussian: ``flexmix(yn ~ I(x^2), k = 2, model = FLXMRglmfix(fixed = ~ x))`` -- intercept and x² per component,
  one slope on x for both, one standard deviation per component, constant mixing weights;
* Poisson: ``flexmix(yp ~ 1, k = 2, model = FLXMRglmfix(family = "poisson", fixed = ~ x))``;

then ``refit()`` of the best start (all parameters by ``optim``, with standard errors from its Hessian). Python fits
the same models with ``HMERegressor(depth=1, gate_features=[], shared_coef=["x"], alpha=0, gate_alpha=0)`` from the
default start over ``--seeds`` seeds and reports log-likelihoods, the free-parameter count, BIC, estimates and
standard errors next to flexmix's. ``--reference PATH`` writes flexmix's figures and the data for the tests
(``tests/test_fixed_effects.py``); ``--out`` writes the table (``docs/fixed_effects.md``).

    python benchmarks/bench_glmfix.py --out docs/fixed_effects.md --reference tests/data/flexmix_npreg.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
from bench_flexmix import ensure_r

R_SCRIPT = r"""
suppressMessages(library(flexmix))
out <- commandArgs(trailingOnly = TRUE)[1]
data("NPreg", package = "flexmix")
write.csv(NPreg[, c("x", "yn", "yp")], file.path(out, "NPreg.csv"), row.names = FALSE)
models <- list(
  gaussian = list(formula = yn ~ I(x^2), model = FLXMRglmfix(fixed = ~ x)),
  poisson = list(formula = yp ~ 1, model = FLXMRglmfix(family = "poisson", fixed = ~ x)))
lines <- c(paste("meta.flexmix", as.character(packageVersion("flexmix"))),
           paste("meta.r", paste(R.version$major, R.version$minor, sep = ".")))
for (name in names(models)) {
  m <- models[[name]]
  set.seed(1)
  t <- system.time(fits <- lapply(1:10, function(i) flexmix(m$formula, data = NPreg, k = 2, model = m$model)))
  ll <- sapply(fits, function(f) as.numeric(logLik(f)))
  best <- fits[[which.max(ll)]]
  rf <- refit(best)
  add <- function(key, v) lines <<- c(lines, paste(paste0(name, ".", key), paste(format(v, digits = 15),
                                                                               collapse = ",")))
  add("loglik_starts", ll)
  add("loglik", max(ll))
  add("df", attr(logLik(best), "df"))
  add("bic", BIC(best))
  add("cpu", unname(t["user.self"] + t["sys.self"]) / 10)
  add("prior", prior(best))
  if (name == "gaussian") add("sigma", parameters(best)["sigma", ])
  for (k in 1:2) {
    tab <- rf@components[[1]][[k]]
    add(paste0("refit_names", k), gsub(" ", "", rownames(tab)))
    add(paste0("refit_est", k), tab[, 1])
    add(paste0("refit_se", k), tab[, 2])
  }
}
writeLines(lines, file.path(out, "r.txt"))
"""


def run_flexmix(workdir: str) -> dict:
    """Run the R script; {'gaussian': {...}, 'poisson': {...}, 'meta': {...}} and the data frame."""
    path = os.path.join(workdir, "glmfix.R")
    with open(path, "w") as fh:
        fh.write(R_SCRIPT)
    subprocess.run(["Rscript", path, workdir], check=True)
    out: dict = {}
    for line in open(os.path.join(workdir, "r.txt")):
        key, _, value = line.strip().partition(" ")
        head, _, tail = key.partition(".")
        parts = value.split(",")
        try:
            v = [float(x) for x in parts]
        except ValueError:
            v = parts
        out.setdefault(head, {})[tail] = v[0] if len(v) == 1 and not tail.startswith("refit") else v
    return out


def flexmix_table(res: dict) -> dict:
    """flexmix's refit per component: {component: {term: (estimate, se)}} with terms 'intercept', 'x', 'x2'."""
    rename = {"(Intercept)": "intercept", "x": "x", "I(x^2)": "x2"}
    out = {}
    for k in (1, 2):
        names = [rename[n.strip()] for n in res[f"refit_names{k}"]]
        out[k] = {n: (e, s) for n, e, s in zip(names, res[f"refit_est{k}"], res[f"refit_se{k}"], strict=True)}
    return out


def design(data: pd.DataFrame, family: str) -> tuple[pd.DataFrame, np.ndarray]:
    """(X, y) of the benchmark's models: Gaussian ``yn`` on (x, x²), Poisson ``yp`` on x."""
    if family == "gaussian":
        return pd.DataFrame({"x": data["x"], "x2": data["x"] ** 2}), data["yn"].to_numpy(float)
    return pd.DataFrame({"x": data["x"]}), data["yp"].to_numpy(float)


def fit_hme(data: pd.DataFrame, family: str, seed: int, n_init: int = 3):
    """The HME version of the flexmix model (flat, constant weights, x shared, no ridge), from the default start."""
    from hme import HMERegressor

    X, y = design(data, family)
    est = HMERegressor(depth=1, branching=2, expert=family, gate_features=[], shared_coef=["x"], alpha=0,
                       gate_alpha=0, n_init=n_init, max_iter=2000, tol=1e-10, random_state=seed)
    t = time.perf_counter()
    est.fit(X, y)
    return est, time.perf_counter() - t, X, y


def hme_table(est, X, y, intercepts) -> dict:
    """{component: {term: (estimate, se)}}, the leaves matched to flexmix's components by their intercepts
    (``intercepts``, component 1 first)."""
    summ = est.summary(X, y)
    e = est.params_.experts
    own = np.asarray(e.intercept)[:, 0]
    order = [int(np.argmin(np.abs(own - c))) for c in intercepts]
    out = {}
    for k, leaf in enumerate(order, start=1):
        row = {"intercept": (float(e.intercept[leaf, 0]), float(summ.loc[f"leaf {leaf}: intercept", "std_err"]))}
        for j, name in enumerate(X.columns):
            label = "shared: x" if name == "x" else f"leaf {leaf}: {name}"
            row[name] = (float(e.coef[leaf, j, 0]), float(summ.loc[label, "std_err"]))
        out[k] = row
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10, help="HME fits from the default start (random_state 0..)")
    ap.add_argument("--no-install", action="store_true", help="never call apt-get")
    ap.add_argument("--out", help="write the markdown table here (docs/fixed_effects.md)")
    ap.add_argument("--reference", help="write flexmix's figures (and the data) here for the tests")
    args = ap.parse_args(argv)
    if not ensure_r(not args.no_install):
        return 2
    with tempfile.TemporaryDirectory() as work:
        r = run_flexmix(work)
        data = pd.read_csv(os.path.join(work, "NPreg.csv"))
    if args.reference:
        data.to_csv(os.path.join(os.path.dirname(args.reference), "NPreg.csv"), index=False)
        with open(args.reference, "w") as fh:
            json.dump(r, fh, indent=1)
    lines = ["# Fixed effects: `shared_coef` against flexmix's FLXMRglmfix (NPreg)\n",
             f"Written by `python benchmarks/bench_glmfix.py --out docs/fixed_effects.md` (flexmix "
             f"{r['meta']['flexmix']}, R {r['meta']['r']}). flexmix: best of 10 random starts, then `refit()` for the "
             f"estimates and standard errors; hme: `HMERegressor(depth=1, gate_features=[], shared_coef=['x'], "
             f"alpha=0, gate_alpha=0, n_init=3)` from the default start, {args.seeds} seeds.\n"]
    for family in ("gaussian", "poisson"):
        rf = r[family]
        fits = [fit_hme(data, family, s) for s in range(args.seeds)]
        lls = np.array([f[0].log_likelihood_ for f in fits])
        best, _, X, y = max(fits, key=lambda f: f[0].log_likelihood_)
        k_hme = best._n_parameters(best._spec)
        bic = -2 * best.log_likelihood_ + k_hme * np.log(len(y))
        secs = np.median([f[1] for f in fits])
        model = ("yn ~ I(x^2), fixed = ~ x" if family == "gaussian" else "yp ~ 1, fixed = ~ x")
        lines += [f"\n## {family}: `{model}`, k = 2\n",
                  "| | flexmix | hme |", "|---|---:|---:|",
                  f"| log-likelihood (best) | {rf['loglik']:.4f} | {lls.max():.4f} |",
                  f"| log-likelihood (worst start / seed) | {min(rf['loglik_starts']):.4f} | {lls.min():.4f} |",
                  f"| seeds at ≥ flexmix's best − 1e-6 | | {int(np.sum(lls >= rf['loglik'] - 1e-6))} of {len(lls)} |",
                  f"| free parameters | {int(rf['df'])} | {k_hme} |",
                  f"| BIC | {rf['bic']:.3f} | {bic:.3f} |",
                  f"| seconds per fit (median) | {rf['cpu']:.3f} (CPU) | {secs:.3f} (wall) |",
                  "", "| component | term | flexmix refit | SE | hme | SE |", "|---|---|---:|---:|---:|---:|"]
        ft = flexmix_table(rf)
        ht = hme_table(best, X, y, [ft[k]["intercept"][0] for k in (1, 2)])
        for k in (1, 2):
            for term, (e, s) in ft[k].items():
                he, hs = ht[k][term]
                lines.append(f"| {k} | {term} | {e:.4f} | {s:.4f} | {he:.4f} | {hs:.4f} |")
        print("\n".join(lines[-(2 * len(ft[1]) + 12):]))
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
