"""The pieces every fitting engine shares. :func:`iterate` is the one compiled iterate loop (stopping rule, history,
last finite state, progress reports) that EM (:mod:`hme.em`) and the gradient solvers (:mod:`hme.gradient`) plug
their steps into."""

from .driver import IterateResult, iterate

__all__ = ["IterateResult", "iterate"]
