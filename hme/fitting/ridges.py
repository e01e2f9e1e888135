r"""The default ridges on the standardised input scale, in the units of the core's options.

* :func:`input_variances` -- the weighted variance ``Var(x_j)`` of each input (1 for a constant one): a ridge
  ``½ γ b_j²`` on the standardised scale is ``½ γ Var(x_j) b_j²`` on the raw scale;
* :func:`standardised_gate_ridge` -- ``gate_alpha`` for a gate ridge of strength γ on standardised inputs:
  ``γ · [1, Var(x_1), ..., Var(x_p)]`` (bias, slopes) for linear-logit gates (softmax: scikit-learn's
  ``LogisticRegression(C = 1 / γ)`` on standardised inputs), ``γ`` on the biases for the other families (their
  weight rows are locations and are not shrunk).
"""

from __future__ import annotations

import numpy as np

from .. import gates as tree_gates
from ..spec import ModelSpec


def input_variances(X, sample_weight, features) -> np.ndarray:
    """Weighted variance of each input in ``features`` (all when None); 1 for a constant input."""
    Xs = np.asarray(X, np.float64)
    if features is not None:
        Xs = Xs[:, list(features)]
    w = np.asarray(sample_weight, np.float64)
    w = w / w.sum()
    var = w @ (Xs - w @ Xs) ** 2 if Xs.shape[1] else np.zeros(0)
    return np.where(var > 0, var, 1.0)


def standardised_gate_ridge(spec: ModelSpec, X, sample_weight, strength: float):
    """The core's ``gate_alpha`` for a ridge of ``strength`` on the standardised gate inputs (module docstring)."""
    if not tree_gates.uses_node_gram(spec):  # one ridge per design column only for linear-logit gates
        return float(strength)
    return strength * np.concatenate([[1.0], input_variances(X, sample_weight, spec.gate_features)])
