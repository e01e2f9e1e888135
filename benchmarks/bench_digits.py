"""The digits fit of issue #10: time and test accuracy of HMEClassifier against LogisticRegression.

``HMEClassifier(depth=2, random_state=0)`` on 1,400 standardised digits (10 classes x 64 pixels: multinomial
Newton systems of 9 x 65 = 585 coefficients per leaf), tested on the other 397. It runs twice: with the default
M-step (conjugate-gradient Newton solves for systems this large, see ``hme._logit.NEWTON_CG_MIN_WORK``) and with
the Hessian formed and factored directly. Each fit includes compilation, as a user's first fit does.

    python benchmarks/bench_digits.py [--out docs/digits.md]
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the table as Markdown here")
    args = ap.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    import hme._logit
    from hme import HMEClassifier

    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    idx = np.random.default_rng(0).permutation(len(X))
    train, test = idx[:1400], idx[1400:]

    rows = []
    t = time.perf_counter()
    lr = LogisticRegression(max_iter=2000).fit(X[train], y[train])
    rows.append(("LogisticRegression(max_iter=2000)", time.perf_counter() - t, lr.score(X[test], y[test]), "", ""))
    default = hme._logit.NEWTON_CG_MIN_WORK
    for label, threshold in [("HMEClassifier(depth=2), conjugate-gradient Newton (default)", default),
                             ("HMEClassifier(depth=2), Hessian formed and factored", float("inf"))]:
        hme._logit.NEWTON_CG_MIN_WORK = threshold
        jax.clear_caches()  # the threshold is read when the program is traced
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = time.perf_counter()
            model = HMEClassifier(depth=2, random_state=0).fit(X[train], y[train])
            seconds = time.perf_counter() - t
        loglik = float(np.mean(np.log(model.predict_proba(X[train])[np.arange(len(train)), y[train]])))
        note = f"{model.n_iter_} iterations, converged={model.converged_}, warnings: {len(caught)}"
        rows.append((label, seconds, model.score(X[test], y[test]), f"{loglik:.2e}", note))
    hme._logit.NEWTON_CG_MIN_WORK = default

    lines = [
        f"Digits fit of issue #10, `python benchmarks/bench_digits.py` ({platform.machine()}, "
        f"jax {jax.__version__}, float64, time includes compilation)",
        "",
        "| model | seconds | test accuracy | train mean log p(y \\| x) | notes |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {m} | {s:.1f} | {a:.3f} | {ll} | {n} |" for m, s, a, ll, n in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
