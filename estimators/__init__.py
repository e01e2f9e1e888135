"""scikit-learn estimators over the functional core (installed as ``hme.estimators``; re-exported by ``hme``)."""

from ._base import DegenerateFitWarning, ExtrapolationWarning, NotIdentifiedWarning
from ._persistence import load
from .bayesian import BayesianHMEClassifier, BayesianHMERegressor
from .classifier import HMEClassifier
from .regressor import HMERegressor
from .selector import HMESelector

__all__ = [
    "BayesianHMEClassifier",
    "BayesianHMERegressor",
    "DegenerateFitWarning",
    "ExtrapolationWarning",
    "NotIdentifiedWarning",
    "HMEClassifier",
    "HMERegressor",
    "HMESelector",
    "load",
]
