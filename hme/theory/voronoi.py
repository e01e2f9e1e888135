r"""Voronoi losses between a fitted and a true mixing measure (docs/theory.md §1.5, §4.4, §6.3).

A flat mixture of experts with k atoms is the mixing measure ``G = Σ_i w_i δ_{θ_i}`` with weights
``w_i = exp(gate intercept)`` (Gaussian gates: ``π_i``) and atoms ``θ_i = (gate, a_i, b_i, ν_i)``: the gate slope
(softmax), key (Laplace) or mean and covariance (Gaussian), the expert slope ``a``, bias ``b`` and variance ``ν``.

* **Cells** ``A_j = {i : j = argmin_ℓ dist(θ_i, θ*_ℓ)}`` with the L1-type distance
  ``‖Δgate‖ + ‖Δa‖ + |Δb| + |Δν|`` of the authors' code. An empty cell is a *fit failure* (loss = inf, flagged).
* **Loss** (exact or over-specified; cells with one atom carry exponent 1 on every parameter)::

      D(G, G*) = Σ_j |Σ_{i∈A_j} w_i - w*_j| + Σ_j Σ_{i∈A_j} w_i Σ_param ‖Δparam_ij‖^{e_param(|A_j|)}

  with ``e = (r̄, r̄/2, r̄, r̄/2)`` for (gate, a, b, ν) under softmax gating, ``(2, 2, r̄, r̄/2)`` under Laplace
  gating and ``(c: r̄, Γ: r̄/2, a: 2, b: r̄, ν: r̄/2)`` under Gaussian gating, ``r̄ = RBAR[|A_j|]``.
  With ``|A_j| = 1`` everywhere this is the exactly-specified loss D1.
* **Translations.** Softmax gates are unchanged by a common shift ``(t0, t1)`` of every (intercept, slope), Laplace
  gates by a common ``t0``: the loss is the infimum over these shifts (without it a split of the reference expert
  scores ≈ 1 however good the fit). Gaussian gates have normalised ``π`` and no invariance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from ..families import gate_family

RBAR = {1: 1, 2: 4, 3: 6}  # solvability numbers r̄(m) (Ho & Nguyen 2016); unknown for m >= 4

def exponents(gate: str, m: int) -> dict[str, float]:
    """Exponent of each parameter's discrepancy in a Voronoi cell holding ``m`` fitted atoms (the gate family's
    published rates, :meth:`hme.families.GateFamily.voronoi_exponents`)."""
    fam = _covered(gate)
    if m == 1:
        return {p: 1.0 for p in fam.voronoi_parameters}
    if m not in RBAR:
        raise ValueError(f"r̄({m}) is unknown (only cells of 1-3 atoms are covered by the theory)")
    return fam.voronoi_exponents(float(RBAR[m]))


def _covered(gate: str):
    """The gate family, when the theory covers it (it has Voronoi exponents)."""
    fam = gate_family(gate)
    if not fam.voronoi_parameters:
        raise ValueError(f"the Voronoi theory does not cover {gate!r} gates")
    return fam


@dataclass
class Atoms:
    """A flat mixing measure: k atoms in d input dimensions (NumPy, float64).

    weight : (k,) ``exp(gate intercept)`` or ``π``
    gate : (k, q) gate slopes / keys / means; gate_cov : (k, d, d) Gaussian gates only
    slope : (k, d) expert slopes a; bias : (k,) expert biases b; var : (k,) expert variances ν
    """

    weight: np.ndarray
    gate: np.ndarray
    slope: np.ndarray
    bias: np.ndarray
    var: np.ndarray
    gate_cov: np.ndarray | None = None

    def __post_init__(self):
        for name in ("weight", "gate", "slope", "bias", "var"):
            setattr(self, name, np.asarray(getattr(self, name), np.float64))
        self.gate = self.gate.reshape(len(self.weight), -1)
        self.slope = self.slope.reshape(len(self.weight), -1)
        if self.gate_cov is not None:
            self.gate_cov = np.asarray(self.gate_cov, np.float64).reshape(len(self.weight), self.gate.shape[1], -1)

    @property
    def k(self) -> int:
        return len(self.weight)

    def take(self, idx) -> Atoms:
        idx = np.asarray(idx)
        cov = None if self.gate_cov is None else self.gate_cov[idx]
        return Atoms(self.weight[idx], self.gate[idx], self.slope[idx], self.bias[idx], self.var[idx], cov)

    def shifted(self, t0: float, t1: np.ndarray | None = None) -> Atoms:
        """Every weight times ``e^{t0}`` and (softmax) every gate slope plus ``t1``."""
        gate = self.gate if t1 is None else self.gate + np.asarray(t1)[None]
        return Atoms(self.weight * np.exp(t0), gate, self.slope, self.bias, self.var, self.gate_cov)


def discrepancies(fit: Atoms, truth: Atoms) -> dict[str, np.ndarray]:
    """Per-parameter distances between every fitted atom i and true atom j, each of shape (k, k*)."""
    out = {
        "slope": np.linalg.norm(fit.slope[:, None] - truth.slope[None], axis=-1),
        "bias": np.abs(fit.bias[:, None] - truth.bias[None]),
        "var": np.abs(fit.var[:, None] - truth.var[None]),
    }
    gate = np.linalg.norm(fit.gate[:, None] - truth.gate[None], axis=-1)
    if fit.gate_cov is not None:
        out["gate_mean"] = gate
        out["gate_cov"] = np.linalg.norm(fit.gate_cov[:, None] - truth.gate_cov[None], axis=(-2, -1))
    else:
        out["gate"] = gate
    return out


def voronoi_cells(fit: Atoms, truth: Atoms) -> np.ndarray:
    """Cell label of every fitted atom: argmin_j Σ_param dist_param(θ_i, θ*_j), shape (k,)."""
    total = sum(discrepancies(fit, truth).values())
    return np.argmin(total, axis=1)


@dataclass
class LossResult:
    """The loss and what it is made of.

    loss : D (inf when a cell is empty); weight_term, param_term : its two sums
    cells : (k,) cell label of each fitted atom; sizes : (k*,) atoms per cell; failed : an empty cell
    errors : per parameter, the largest discrepancy inside cells with one atom ("<p>_exact") and inside cells
        with several atoms ("<p>_over"), plus "weight_exact"/"weight_over": the largest |Σ_{A_j} w_i - w*_j|
    shift : the translation (t0, t1...) at which the infimum was attained
    """

    loss: float
    weight_term: float
    param_term: float
    cells: np.ndarray
    sizes: np.ndarray
    failed: bool
    errors: dict = field(default_factory=dict)
    shift: np.ndarray = field(default_factory=lambda: np.zeros(1))


def _loss_fixed(fit: Atoms, truth: Atoms, gate: str) -> LossResult:
    cells = voronoi_cells(fit, truth)
    sizes = np.bincount(cells, minlength=truth.k)
    if np.any(sizes == 0):
        return LossResult(np.inf, np.inf, np.inf, cells, sizes, True)
    disc = discrepancies(fit, truth)
    weight_term = 0.0
    param_term = 0.0
    errors: dict[str, float] = {}
    for j in range(truth.k):
        members = np.flatnonzero(cells == j)
        m = len(members)
        tag = "exact" if m == 1 else "over"
        werr = abs(fit.weight[members].sum() - truth.weight[j])
        weight_term += werr
        errors[f"weight_{tag}"] = max(errors.get(f"weight_{tag}", 0.0), werr)
        e = exponents(gate, m)
        for name, power in e.items():
            d = disc[name][members, j]
            param_term += float(np.sum(fit.weight[members] * d**power))
            errors[f"{name}_{tag}"] = max(errors.get(f"{name}_{tag}", 0.0), float(np.max(d)))
    return LossResult(weight_term + param_term, weight_term, param_term, cells, sizes, False, errors)


def voronoi_loss(fit: Atoms, truth: Atoms, gate: str, translate: bool = True) -> LossResult:
    """D(G, G*) of the module docstring, as an infimum over the gate's translations when ``translate``.

    The shift search starts from every alignment of a fitted atom's gate with a true atom's (and from no shift),
    then polishes the best starts with Nelder-Mead; the loss at the returned shift is recomputed exactly.
    """
    fam = _covered(gate)
    # the gate is invariant under a common shift of the biases (a reference bias) and, for slopes, of the weights
    if not translate or not fam.reference_bias:
        return _loss_fixed(fit, truth, gate)
    dim = 1 + (fit.gate.shape[1] if fam.reference_weight else 0)

    def unpack(t):
        return (t[0], t[1:]) if fam.reference_weight else (t[0], None)

    def objective(t):
        loss = _loss_fixed(fit.shifted(*unpack(t)), truth, gate).loss
        return loss if np.isfinite(loss) else 1e300

    starts = [np.zeros(dim)]
    for i in range(fit.k):
        for j in range(truth.k):
            t0 = np.log(truth.weight[j]) - np.log(fit.weight[i])
            t = [t0] + (list(truth.gate[j] - fit.gate[i]) if fam.reference_weight else [])
            starts.append(np.asarray(t))
    starts += [np.r_[t0, np.zeros(dim - 1)] for t0 in np.linspace(-2.0, 1.0, 7)]
    values = np.array([objective(t) for t in starts])
    best_t, best_v = starts[int(np.argmin(values))], float(np.min(values))
    for idx in np.argsort(values)[:3]:
        res = minimize(
            objective, starts[idx], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 400 * dim}
        )
        if res.fun < best_v:
            best_t, best_v = res.x, float(res.fun)
    out = _loss_fixed(fit.shifted(*unpack(best_t)), truth, gate)
    out.shift = np.asarray(best_t)
    return out


# -- two-level (hierarchical) mixing measures ---------------------------------------------------------


@dataclass
class TwoLevelAtoms:
    """A two-level HMoE: ``k1`` groups (outer weight and gate parameter each), and per group a flat measure.

    outer_weight : (k1,) ``exp(outer intercept)``; outer_gate : (k1, q) outer slopes / keys
    inner : list of k1 :class:`Atoms` (their weights are ``exp(inner intercept)`` within the group)
    """

    outer_weight: np.ndarray
    outer_gate: np.ndarray
    inner: list


def two_level_loss(fit: TwoLevelAtoms, truth: TwoLevelAtoms, outer_gate: str, inner_gate: str) -> dict:
    """Total loss of docs/theory.md §4.4 with the outer level exactly specified.

    ``D = Σ_j1 |w_j1 - w*_j1| + Σ_j1 w_j1 ‖Δa_j1‖ + Σ_j1 w_j1 · D_inner(group j1)``: groups are matched by the
    Voronoi cells of their outer gate parameters (an empty or doubly-filled outer cell is a failure), the outer
    translation minimises the outer part, each group's inner translation its inner part. Returns the loss, the
    inner :class:`LossResult` of each true group, the outer errors and a failure flag.
    """
    outer_fit = Atoms(
        fit.outer_weight,
        fit.outer_gate,
        np.zeros((len(fit.outer_weight), 1)),
        np.zeros(len(fit.outer_weight)),
        np.zeros(len(fit.outer_weight)),
    )
    k1 = len(truth.outer_weight)
    outer_true = Atoms(truth.outer_weight, truth.outer_gate, np.zeros((k1, 1)), np.zeros(k1), np.zeros(k1))
    outer = voronoi_loss(outer_fit, outer_true, outer_gate)
    if outer.failed or np.any(outer.sizes != 1):
        return {"loss": np.inf, "failed": True, "outer": outer, "inner": []}
    shifted_w = fit.outer_weight * np.exp(outer.shift[0])
    total = outer.loss
    inner_results = []
    for j in range(k1):
        i = int(np.flatnonzero(outer.cells == j)[0])
        res = voronoi_loss(fit.inner[i], truth.inner[j], inner_gate)
        inner_results.append(res)
        total += shifted_w[i] * res.loss
    failed = any(r.failed for r in inner_results)
    return {"loss": np.inf if failed else float(total), "failed": failed, "outer": outer, "inner": inner_results}
