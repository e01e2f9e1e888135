"""scikit-learn's estimator checks (the contrib project-template test_common.py pattern)."""

import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from hme import DegenerateFitWarning, ExtrapolationWarning, HMEClassifier, HMERegressor

# Small trees and few iterations keep the ~50 checks fast; the checks test the API contract, not statistics.
ESTIMATORS = [
    HMERegressor(depth=1, max_iter=30, random_state=0),
    HMEClassifier(depth=1, max_iter=30, random_state=0, alpha=1e-2),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        # 30 EM iterations rarely meet tol on the checks' random data; the warning itself is tested elsewhere
        warnings.simplefilter("ignore", ConvergenceWarning)
        # the checks' data are 20-30 random rows: an expert often interpolates a few of them (reported and tested
        # in tests/test_estimators.py::test_degenerate_fits_are_reported)
        warnings.simplefilter("ignore", DegenerateFitWarning)
        # some checks predict on fresh random rows far outside the 20-30 training rows' range; the warning (and
        # the clipping it reports) is tested in tests/test_real_data.py
        warnings.simplefilter("ignore", ExtrapolationWarning)
        check(estimator)
