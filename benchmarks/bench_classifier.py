"""Held-out log-loss of default HMEClassifiers against LogisticRegression's defaults (issue 12).

For breast_cancer, wine, iris and digits (scikit-learn's bundled copies): 5-fold stratified cross-validation
(shuffled, seed 0) of ``make_pipeline(StandardScaler(), model)`` for ``LogisticRegression()`` (C = 1) and
``HMEClassifier(depth=d, random_state=0)`` with every other parameter at its default. Reports the mean held-out
log-loss, its ratio to logistic regression's (target: at most 1.25), accuracy, and how many fits raised a
ConvergenceWarning.

    python benchmarks/bench_classifier.py                          # writes docs/classifier.md
    python benchmarks/bench_classifier.py --sets iris,wine --depths 1 --no-write
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_real_data import parse_params  # noqa: E402  (one parser for both benchmarks' --params)

SETS = ("breast_cancer", "wine", "iris", "digits")
TARGET_RATIO = 1.25


def load(name: str):
    from sklearn import datasets

    return getattr(datasets, f"load_{name}")(return_X_y=True)


def cv_scores(model, X, y, folds: int = 5):
    """(per-fold log-loss, per-fold accuracy, fits that raised ConvergenceWarning)."""
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, log_loss
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    losses, accs, warned = [], [], 0
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y):
        pipe = make_pipeline(StandardScaler(), clone(model))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.fit(X[tr], y[tr])
            p = pipe.predict_proba(X[te])
        warned += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        losses.append(log_loss(y[te], p, labels=np.unique(y)))
        accs.append(accuracy_score(y[te], pipe.classes_[np.argmax(p, 1)]))
    return np.array(losses), np.array(accs), warned


def run(sets, depths, params=None, log=print):
    from sklearn.linear_model import LogisticRegression

    from hme import HMEClassifier

    rows = []
    for name in sets:
        X, y = load(name)
        row = {"set": name, "n": len(y), "d": X.shape[1], "classes": len(np.unique(y))}
        row["lr"] = cv_scores(LogisticRegression(max_iter=5000), X, y)
        for depth in depths:
            t0 = time.perf_counter()
            row[depth] = cv_scores(HMEClassifier(depth=depth, random_state=0, **(params or {})), X, y)
            row[f"time{depth}"] = time.perf_counter() - t0
        rows.append(row)
        lr = row["lr"][0].mean()
        log(f"{name:14s} logistic {lr:.4f}  " + "  ".join(
            f"depth {d}: {row[d][0].mean():.4f} (x{row[d][0].mean() / lr:.2f}, acc {row[d][1].mean():.3f}, "
            f"{row[d][2]} warned, {row[f'time{d}']:.0f} s)" for d in depths))
    return rows


def to_markdown(rows, depths, argv) -> str:
    lines = ["| data set | n | d | classes | logistic log-loss (acc) | "
             + " | ".join(f"depth {d}: log-loss (ratio, acc, warned)" for d in depths) + " | within 25% |",
             "|---|---|---|---|---|" + "---|" * len(depths) + "---|"]
    ok_all = True
    for r in rows:
        lr = r["lr"][0].mean()
        ok = all(r[d][0].mean() <= TARGET_RATIO * lr for d in depths)
        ok_all &= ok
        cells = " | ".join(f"{r[d][0].mean():.4f} (×{r[d][0].mean() / lr:.2f}, {r[d][1].mean():.3f}, {r[d][2]}/5)"
                           for d in depths)
        lines.append(f"| {r['set']} | {r['n']} | {r['d']} | {r['classes']} | {lr:.4f} ({r['lr'][1].mean():.3f}) | "
                     f"{cells} | {'yes' if ok else '**no**'} |")
    return "\n".join(
        [
            "# Default HMEClassifier against LogisticRegression: held-out log-loss",
            "",
            f"Written by `python benchmarks/{os.path.basename(__file__)} {' '.join(argv)}`.".replace(" `.", "`."),
            "",
            "Mean 5-fold stratified cross-validated log-loss (shuffled, seed 0) of `make_pipeline(StandardScaler(), "
            "model)`:",
            "`LogisticRegression()` (C = 1) and `HMEClassifier(depth=d, random_state=0)` with its defaults; accuracy "
            "and",
            "the number of the five fits that raised a ConvergenceWarning in parentheses. Target (issue 12): at most "
            "1.25",
            "times logistic regression's log-loss.",
            "",
            *lines,
            "",
            f"All sets within the target: {'yes' if ok_all else 'no'}.",
            "",
        ]
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--depths", default="1,2")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "docs", "classifier.md"))
    ap.add_argument("--params", default="", help="other HMEClassifier parameters, e.g. alpha=1,gate_alpha=1")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    rows = run(args.sets.split(","), depths, parse_params(args.params))
    md = to_markdown(rows, depths, list(argv) if argv is not None else sys.argv[1:])
    print("\n" + md)
    if not args.no_write:
        with open(args.out, "w") as fh:
            fh.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
