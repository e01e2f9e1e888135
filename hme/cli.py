"""Command line: ``hme demo``, ``hme fit DATA.csv --target Y`` and ``hme rates EXPERIMENT [--quick] [--out DIR]``.

Heavy modules (JAX, scikit-learn) are imported inside the commands, so ``hme --help`` answers at once."""

from __future__ import annotations

import argparse
import sys

EXPERIMENTS = ("softmax-flat", "laplace-flat", "gaussian-flat", "hmoe")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hme", description="Hierarchical mixtures of experts in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="fit HMEs of depth 1-4 and a linear model on the bundled kin8nm data")
    fit = sub.add_parser("fit", help="fit an HME to a CSV file, print its summary and save the model",
                         description="Fit HMERegressor (numeric target) or HMEClassifier (non-numeric target, or "
                         "--classify) to the numeric columns of a CSV file with a header row; print the fit, "
                         "the coefficient table with standard errors and the tree; save the model (load it with "
                         "hme.load).")
    fit.add_argument("data", help="CSV file with a header row")
    fit.add_argument("--target", required=True, help="name of the column to predict")
    fit.add_argument("--features", default=None, help="comma-separated input columns (default: every other column)")
    fit.add_argument("--classify", action="store_true", help="treat a numeric target as class labels")
    fit.add_argument("--depth", type=int, default=2)
    fit.add_argument("--branching", type=int, default=2)
    fit.add_argument("--gate", default="softmax", help="a registered gate family: softmax, laplace, ...")
    fit.add_argument("--n-init", type=int, default=3, help="full EM runs (default 3)")
    fit.add_argument("--random-state", type=int, default=0)
    fit.add_argument("--se", choices=("observed", "sandwich"), default="observed")
    fit.add_argument("--out", default=None, help="model file (default: DATA with the suffix .hme.npz)")
    rates = sub.add_parser("rates", help="convergence-rate experiments: Voronoi losses against the theory's slopes")
    rates.add_argument("experiment", choices=EXPERIMENTS)
    rates.add_argument("--quick", action="store_true", help="small grid (about two minutes on two cores)")
    rates.add_argument("--out", default="rates_out", help="output folder (rates.json, rates.md, plots)")
    rates.add_argument("--settings", default=None, help="comma-separated subset: exact, over, or setting names")
    rates.add_argument("--seed", type=int, default=0)
    rates.add_argument("--restarts", type=int, default=None, help="restarts of every setting (default: per experiment)")
    rates.add_argument("--max-iter", type=int, default=None, help="EM iteration cap (default 2000; quick 500)")
    rates.add_argument("--default-gate-alpha", default="1e-8",
                       help="gate ridge of the default-start fits: a number (raw scale; default 1e-8, as the "
                            "near-truth fits), or std:γ, a ridge γ on the standardised inputs (std:1 = the "
                            "estimators' gate_alpha='auto')")
    rates.add_argument("--start", choices=("near-truth", "default", "both"), default="near-truth",
                       help="near-truth starts (the papers' protocol), the estimators' default start (emEM, "
                            "n_init=3), or both on the same samples")
    rates.add_argument(
        "--no-em-rate", action="store_true", help="skip EM's own rate (Jordan & Xu) for flat experiments"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main()
    if args.command == "rates":
        return _rates(args)
    if args.command == "fit":
        return _fit(args)
    return 2


def _read_csv(path: str):
    """(column names, columns as NumPy arrays: float where every entry parses as a number, else str)."""
    import csv

    import numpy as np

    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise ValueError(f"{path}: needs a header row and at least one data row")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if any(len(r) != len(header) for r in body):
        bad = next(i for i, r in enumerate(body) if len(r) != len(header))
        raise ValueError(f"{path}: row {bad + 2} has {len(body[bad])} fields, the header has {len(header)}")
    cols = {}
    for j, name in enumerate(header):
        raw = [r[j].strip() for r in body]
        try:
            cols[name] = np.array([float(v) if v not in ("", "NA", "nan", "NaN") else np.nan for v in raw])
        except ValueError:
            cols[name] = np.array(raw, dtype=object)
    return header, cols


def _fit(args) -> int:
    import os
    import warnings

    import numpy as np

    header, cols = _read_csv(args.data)
    if args.target not in cols:
        raise SystemExit(f"hme fit: no column {args.target!r} in {args.data}; columns: {', '.join(header)}")
    names = [c for c in header if c != args.target] if args.features is None else args.features.split(",")
    missing = [c for c in names if c not in cols]
    if missing:
        raise SystemExit(f"hme fit: unknown feature column(s) {missing}; columns: {', '.join(header)}")
    text = [c for c in names if cols[c].dtype == object]
    if text:
        raise SystemExit(f"hme fit: feature column(s) {text} are not numeric; encode them first or pass --features")
    X = np.column_stack([cols[c] for c in names]) if names else np.zeros((len(cols[args.target]), 0))
    y = cols[args.target]
    classify = args.classify or y.dtype == object
    keep = np.all(np.isfinite(X), axis=1) & (np.ones(len(y), bool) if y.dtype == object else np.isfinite(y))
    if not keep.all():
        print(f"dropped {int((~keep).sum())} rows with missing values")
    X, y = X[keep], y[keep]
    from .estimators import HMEClassifier, HMERegressor

    cls = HMEClassifier if classify else HMERegressor
    est = cls(depth=args.depth, branching=args.branching, gate=args.gate, n_init=args.n_init,
              random_state=args.random_state)
    try:
        import pandas as pd

        X_in = pd.DataFrame(X, columns=names)  # the summary and the saved model keep the column names
    except ImportError:
        X_in = X
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(X_in, y.astype(str) if classify and y.dtype == object else y)
        table = est.summary(X_in, y, se=args.se)
    for w in caught:
        print(f"warning: {w.message}")
    a = table.attrs
    print(f"{cls.__name__}: {a['tree']}, {a['gate']} gates, {a['expert']} experts; n = {a['n_samples']}, "
          f"{a['n_parameters']} parameters; log-likelihood {a['log_likelihood']:.4f}, AIC {a['aic']:.3f}, "
          f"BIC {a['bic']:.3f}; {a['n_iter']} EM iterations, converged: {a['converged']}")
    print(f"training score ({'accuracy' if classify else 'R^2'}): {est.score(X_in, y):.4f}\n")
    print(table.to_string() if hasattr(table, "to_string") else table)
    print("\n" + est.describe(X_in))
    out = args.out or os.path.splitext(args.data)[0] + ".hme.npz"
    est.save(out)
    print(f"\nsaved the model to {out} (load it with hme.load)")
    return 0


def _gate_alpha_arg(text: str) -> float | str:
    """``--default-gate-alpha``: a non-negative number, or ``std:γ`` with γ >= 0."""
    try:
        value = float(text[4:] if text.startswith("std:") else text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise SystemExit(f"--default-gate-alpha must be a number >= 0 or std:γ with γ >= 0, got {text!r}")
    return text if text.startswith("std:") else value


def _rates(args) -> int:
    import warnings

    from .theory import experiments, report

    settings = args.settings.split(",") if args.settings else None
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", RuntimeWarning
        )  # overflow in diverging over-specified fits: counted as failures
        starts = experiments.STARTS if args.start == "both" else (args.start,)
        runs = [experiments.run(args.experiment, quick=args.quick, seed=args.seed, settings=settings,
                                restarts=args.restarts, max_iter=args.max_iter, start=start,
                                default_gate_alpha=_gate_alpha_arg(args.default_gate_alpha)) for start in starts]
        results = runs[0]
        for extra in runs[1:]:
            results["results"] += extra["results"]
            results["seconds"] += extra["seconds"]
        results["start"] = args.start
    if args.experiment in ("softmax-flat", "laplace-flat") and not args.no_em_rate:
        from .theory.em_rate import compare_gates

        results["em_rate"] = [
            {k: v for k, v in r.items() if k != "errors"} for r in compare_gates(seed=args.seed)
        ]
    paths = report.write(results, args.out)
    print(report.to_markdown(results))
    print("\nwrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
