"""scikit-learn estimators over the functional core (installed as ``hme.estimators``; re-exported by ``hme``)."""

from .classifier import HMEClassifier
from .regressor import HMERegressor

__all__ = ["HMEClassifier", "HMERegressor"]
