"""Command line: ``hme demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hme", description="Hierarchical mixtures of experts in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="fit HMEs of depth 1-4 and a linear model on the bundled kin8nm data")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main()
    return 2


if __name__ == "__main__":
    sys.exit(main())
