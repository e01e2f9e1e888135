"""Numerical checks of the convergence theory of (hierarchical) mixtures of experts (``docs/theory.md``).

* :mod:`~hme.theory.voronoi` -- Voronoi cells and losses (exact / over-specified, translation infimum);
* :mod:`~hme.theory.truths` -- the papers' true models (S3 softmax, FuseMoE Laplace, S7 Gaussian, HMoE SS/SL/LL);
* :mod:`~hme.theory.experiments` -- vmapped replicate fits, losses and log-log slopes with bootstrap intervals;
* :mod:`~hme.theory.em_rate` -- EM's own linear rate (Jordan & Xu 1995): from iterates and from the Jacobian;
* :mod:`~hme.theory.report` -- ``rates.json``, a Markdown table and log-log plots (``hme rates``).
"""

from .voronoi import RBAR, Atoms, LossResult, TwoLevelAtoms, exponents, two_level_loss, voronoi_cells, voronoi_loss

__all__ = [
    "RBAR",
    "Atoms",
    "LossResult",
    "TwoLevelAtoms",
    "exponents",
    "two_level_loss",
    "voronoi_cells",
    "voronoi_loss",
]
