"""hme: hierarchical mixtures of experts in JAX (Jordan & Jacobs 1994), fitted by compiled EM.

Names are imported on first use (PEP 562), so ``import hme`` and the ``hme`` command start without loading
JAX; ``from hme import HMERegressor`` and ``hme.fit_em`` work as usual.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS = {
    "EMResult": "fitting",
    "FitOptions": "fitting",
    "e_step": "fitting",
    "em_step": "em",
    "fit_em": "em",
    "m_step": "em",
    "run_em": "em",
    "describe_tree": "describe",
    "fit_gradient": "gradient",
    "fit_em_streaming": "streaming",
    "OnlineEM": "streaming",
    "Parquet": "sources",
    "gate_path_probs": "model",
    "leaf_means": "model",
    "log_likelihood": "model",
    "posteriors": "model",
    "predict_log_proba": "model",
    "predict_mean": "model",
    "predict_proba": "model",
    "ExpertParams": "params",
    "GateParams": "params",
    "HMEParams": "params",
    "zeros_params": "params",
    "ModelSpec": "spec",
    "make_spec": "spec",
    "TreeSpec": "tree",
    "BayesianHMEClassifier": "estimators",
    "BayesianHMERegressor": "estimators",
    "DegenerateFitWarning": "estimators",
    "ExtrapolationWarning": "estimators",
    "NotIdentifiedWarning": "estimators",
    "HMEClassifier": "estimators",
    "HMERegressor": "estimators",
    "HMESelector": "estimators",
    "load": "estimators",
}
_SUBMODULES = ("bayes", "cli", "code_space", "compile_cache", "datasets", "demo", "describe", "distributed", "em",
               "estimators", "families", "fitting", "gates", "gradient", "inference", "init", "model", "monitor",
               "params", "plot", "sharding", "simulate", "sources", "spec", "streaming", "table", "theory", "tree")

__all__ = sorted(_EXPORTS) + ["datasets"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'hme' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
