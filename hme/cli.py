"""Command line: ``hme demo`` and ``hme rates EXPERIMENT [--quick] [--out DIR]``."""

from __future__ import annotations

import argparse
import sys

EXPERIMENTS = ("softmax-flat", "laplace-flat", "gaussian-flat", "hmoe")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hme", description="Hierarchical mixtures of experts in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="fit HMEs of depth 1-4 and a linear model on the bundled kin8nm data")
    rates = sub.add_parser("rates", help="convergence-rate experiments: Voronoi losses against the theory's slopes")
    rates.add_argument("experiment", choices=EXPERIMENTS)
    rates.add_argument("--quick", action="store_true", help="small grid (about two minutes on two cores)")
    rates.add_argument("--out", default="rates_out", help="output folder (rates.json, rates.md, plots)")
    rates.add_argument("--settings", default=None, help="comma-separated subset: exact, over, or setting names")
    rates.add_argument("--seed", type=int, default=0)
    rates.add_argument("--restarts", type=int, default=None, help="restarts of every setting (default: per experiment)")
    rates.add_argument("--max-iter", type=int, default=None, help="EM iteration cap (default 2000; quick 500)")
    rates.add_argument("--start", choices=("near-truth", "default", "both"), default="near-truth",
                       help="near-truth starts (the papers' protocol), the estimators' default start (emEM, "
                            "n_init=3), or both on the same samples")
    rates.add_argument("--no-em-rate", action="store_true", help="skip EM's own rate (Jordan & Xu) for flat experiments")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main()
    if args.command == "rates":
        return _rates(args)
    return 2


def _rates(args) -> int:
    import warnings

    from .theory import experiments, report

    settings = args.settings.split(",") if args.settings else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in diverging over-specified fits: counted as failures
        starts = experiments.STARTS if args.start == "both" else (args.start,)
        runs = [experiments.run(args.experiment, quick=args.quick, seed=args.seed, settings=settings,
                                restarts=args.restarts, max_iter=args.max_iter, start=start) for start in starts]
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
