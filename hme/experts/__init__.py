"""Expert families. Each module provides

* ``log_prob(spec, experts, design, y) -> (log_lik (n, L), aux)`` -- per-leaf conditional log-densities,
* ``m_step(spec, experts, design, y, leaf_w, aux, leaf_gram, opts) -> ExpertParams``,
* ``mean(spec, experts, design) -> (n, L, k)`` -- per-leaf predictive means (class probabilities),
* ``penalty(spec, experts, alpha)`` -- the ridge term subtracted from the log-likelihood,

all batched over leaves (no Python loop over leaves).
"""

from . import categorical, gaussian, poisson

FAMILIES = {"gaussian": gaussian, "categorical": categorical, "poisson": poisson}


def family(spec):
    return FAMILIES[spec.expert]

