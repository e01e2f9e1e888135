"""scikit-learn estimators over the functional core (installed as ``hme.estimators``).

The estimators themselves (``HMERegressor``, ``HMEClassifier``) are the subject of issue #3; this package is
where they live, so that the core never depends on scikit-learn's estimator machinery.
"""

__all__: list[str] = []
