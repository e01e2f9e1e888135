"""The pieces every fitting engine shares.

* :mod:`.problem` -- input validation, padding and the traced options (:func:`prepare_fit`, :class:`FitOptions`),
  once for every engine;
* :mod:`.objective` -- the penalised log-likelihood and the posteriors at a point (:func:`e_step`);
* :mod:`.driver` -- the one compiled iterate loop (:func:`iterate`: stopping rule, history, last finite state,
  progress) that EM (:mod:`hme.em`) and the gradient solvers (:mod:`hme.gradient`) plug their steps into;
* :mod:`.restarts` -- each restart's health and the choice of the winner (:func:`best_of`);
* :mod:`.record` -- what a finished fit leaves behind, as NumPy (:func:`record_fit`; the estimators' attributes);
* :mod:`.ridges` -- the default ridges on the standardised input scale (:func:`standardised_gate_ridge`).
"""

from .driver import IterateResult, iterate
from .objective import EStep, batch_objective, e_step, penalty
from .problem import (
    DEFAULT_ALPHA,
    DEFAULT_GATE_ALPHA,
    DEFAULT_VAR_FLOOR,
    FitData,
    FitOptions,
    Prepared,
    center_inputs,
    check_finite,
    check_n_candidates,
    prepare_fit,
)
from .record import FitRecord, degeneracy, record_fit
from .restarts import EMResult, Trace, best_of, healthy, keep_where, leaf_health, ranks_higher, replace_best_run
from .ridges import input_variances, standardised_gate_ridge

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_GATE_ALPHA",
    "DEFAULT_VAR_FLOOR",
    "EMResult",
    "EStep",
    "FitData",
    "FitOptions",
    "FitRecord",
    "IterateResult",
    "Prepared",
    "Trace",
    "batch_objective",
    "best_of",
    "replace_best_run",
    "center_inputs",
    "check_finite",
    "check_n_candidates",
    "degeneracy",
    "e_step",
    "healthy",
    "input_variances",
    "iterate",
    "keep_where",
    "leaf_health",
    "penalty",
    "prepare_fit",
    "ranks_higher",
    "record_fit",
    "standardised_gate_ridge",
]
