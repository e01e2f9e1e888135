"""hme: hierarchical mixtures of experts in JAX (Jordan & Jacobs 1994), fitted by compiled EM."""

from .em import EMResult, FitOptions, e_step, em_step, fit_em, m_step, run_em
from .describe import describe_tree
from .gradient import fit_gradient
from .model import gate_path_probs, leaf_means, log_likelihood, posteriors, predict_mean, predict_proba
from .params import ExpertParams, GateParams, HMEParams, zeros_params
from .spec import ModelSpec, make_spec
from .tree import TreeSpec

__version__ = "0.1.0"

__all__ = [
    "EMResult",
    "ExpertParams",
    "FitOptions",
    "GateParams",
    "HMEParams",
    "ModelSpec",
    "TreeSpec",
    "describe_tree",
    "e_step",
    "em_step",
    "fit_em",
    "fit_gradient",
    "gate_path_probs",
    "leaf_means",
    "log_likelihood",
    "m_step",
    "make_spec",
    "posteriors",
    "predict_mean",
    "predict_proba",
    "run_em",
    "zeros_params",
]

from . import datasets  # noqa: E402
from .estimators import BayesianHMEClassifier, BayesianHMERegressor, DegenerateFitWarning, HMEClassifier, HMERegressor, HMESelector, load  # noqa: E402

__all__ += ["BayesianHMEClassifier", "BayesianHMERegressor", "DegenerateFitWarning", "HMEClassifier", "HMERegressor", "HMESelector", "datasets", "load"]
