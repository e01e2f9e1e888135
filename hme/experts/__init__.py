"""Expert families. Each module provides

* ``log_prob(spec, experts, design, y) -> (log_lik (n, L), aux)`` -- per-leaf conditional log-densities,
* ``m_step(spec, experts, design, y, leaf_w, aux, leaf_gram, opts) -> ExpertParams``,
* ``mean(spec, experts, design) -> (n, L, k)`` -- per-leaf predictive means (class probabilities),
* ``penalty(spec, experts, alpha)`` -- the ridge term subtracted from the log-likelihood,

all batched over leaves (no Python loop over leaves). Regression families (Gaussian, Poisson) also own their
predictive distribution, in NumPy on the host (:mod:`hme.predictive` mixes them over the leaves):

* ``leaf_variance(cov, mu) -> (n, L, m)``, ``mixture_quantiles(cov, pi, mu, q) -> (n, m, len(q))``,
* ``sample(cov, means, leaf, rng) -> (n, S, m)``.
"""

from . import categorical, gaussian, poisson

FAMILIES = {"gaussian": gaussian, "categorical": categorical, "poisson": poisson}


def family(spec):
    return FAMILIES[spec.expert]

