"""scikit-learn estimators over the functional core (installed as ``hme.estimators``; re-exported by ``hme``)."""

from ._persistence import load
from .classifier import HMEClassifier
from .regressor import HMERegressor

__all__ = ["HMEClassifier", "HMERegressor", "load"]
