"""True models of the rate experiments (docs/theory.md §5, §6.2), as core specs and parameters, with samplers.

Every truth converts between the core's parameters (child 0 of a softmax gate is the reference with slope and
intercept 0) and the mixing measures of :mod:`hme.theory.voronoi`.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..families import gate_family
from ..params import ExpertParams, GateParams, HMEParams
from ..spec import make_spec
from ..tree import TreeSpec
from .voronoi import Atoms, TwoLevelAtoms


def _np_params(bias, weight, intercept, coef, var, gate_cov=None) -> HMEParams:
    bias = np.asarray(bias, np.float64)
    weight = np.asarray(weight, np.float64)
    intercept = np.asarray(intercept, np.float64).reshape(-1, 1)
    L = intercept.shape[0]
    coef = np.asarray(coef, np.float64).reshape(L, -1, 1)
    cov = np.asarray(var, np.float64).reshape(L, 1, 1)
    gc = None if gate_cov is None else np.asarray(gate_cov, np.float64)
    return HMEParams(GateParams(bias, weight, gc), ExpertParams(intercept, coef, cov))


@dataclass(frozen=True)
class FlatTruth:
    """A flat mixture of experts: ``gate`` family, parameters with one gate, and how X is drawn."""

    name: str
    gate: str
    params: HMEParams
    design: str = "uniform"  # "uniform" (X ~ U[0,1]^d), "grid" (linspace(0, 1, n), d = 1) or "joint" (Gaussian gate)

    @property
    def d(self) -> int:
        return self.params.gates.weight.shape[-1]

    @property
    def k(self) -> int:
        return self.params.gates.bias.shape[-1]

    def atoms(self, params: HMEParams | None = None) -> Atoms:
        return flat_atoms(self.gate, self.params if params is None else params)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(X (n, d), y (n,)) drawn from the truth."""
        g, e = self.params
        if self.design == "joint":  # z ~ π, x ~ N(c_z, Γ_z)
            pi = np.exp(g.bias[0])
            z = rng.choice(self.k, size=n, p=pi / pi.sum())
            chol = np.linalg.cholesky(g.cov[0])
            X = g.weight[0][z] + np.einsum("nij,nj->ni", chol[z], rng.normal(size=(n, self.d)))
        else:
            X = np.linspace(0.0, 1.0, n)[:, None] if self.design == "grid" else rng.uniform(size=(n, self.d))
            z = _draw_leaf(gate_probs(self.gate, g, X), rng)
        mu = e.intercept[z, 0] + np.einsum("nd,nd->n", X, e.coef[z, :, 0])
        return X, mu + np.sqrt(e.cov[z, 0, 0]) * rng.normal(size=n)


def _draw_leaf(prob: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = rng.uniform(size=(prob.shape[0], 1))
    return np.minimum(np.sum(np.cumsum(prob, axis=1) < u, axis=1), prob.shape[1] - 1)


def gate_probs(gate: str, g: GateParams, X: np.ndarray, index: int = 0) -> np.ndarray:
    """Probabilities of the children of gate ``index`` at X, (n, B), in NumPy."""
    fam = gate_family(gate)
    spec = make_spec(X.shape[1], depth=1, branching=g.bias.shape[1], gate=gate)
    design = np.column_stack([np.ones(X.shape[0]), X]) if fam.intercept else X
    one = GateParams(g.bias[index][None], g.weight[index][None], None if g.cov is None else g.cov[index][None])
    with jax.enable_x64(True):  # the family's own logits, in float64 whatever the session's default
        logits = np.asarray(fam.logits(spec, jnp.asarray(design, jnp.float64), one), np.float64)[:, 0]
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def flat_atoms(gate: str, params: HMEParams, index: int = 0, leaves=None) -> Atoms:
    """The mixing measure of gate ``index`` whose children are the experts ``leaves`` (default: all)."""
    g, e = params
    leaves = np.arange(e.intercept.shape[0]) if leaves is None else np.asarray(leaves)
    k = len(leaves)
    cov = None if g.cov is None else np.asarray(g.cov)[index, :k]
    return Atoms(
        np.exp(np.asarray(g.bias)[index, :k]),
        np.asarray(g.weight)[index, :k],
        np.asarray(e.coef)[leaves, :, 0],
        np.asarray(e.intercept)[leaves, 0],
        np.asarray(e.cov)[leaves, 0, 0],
        cov,
    )


# -- the flat truths -------------------------------------------------------------------------------------


def softmax_s3() -> FlatTruth:
    """S3 (docs/theory.md §5.1): P(expert 1 | x) = σ(-8 + 25x); experts 15 - 20x (ν 0.09) and -5 + 20x (ν 0.16).

    Child 0 is S3's reference expert 2."""
    return FlatTruth(
        "S3 softmax, k*=2",
        "softmax",
        _np_params([[0.0, -8.0]], [[[0.0], [25.0]]], [-5.0, 15.0], [20.0, -20.0], [0.16, 0.09]),
        design="grid",
    )


def laplace_fusemoe() -> FlatTruth:
    """FuseMoE-style flat Laplace truth (docs/theory.md §5.3), k* = 2, d = 1, X ~ U[0, 1].

    FuseMoE draws the keys from N(0, 0.01); in d = 1 such keys lie left of the data, where
    ``|W - x| = x - W`` makes the gate constant in x and the keys unidentifiable, so the keys here are fixed
    inside the data range (0.25, 0.75). Experts and variances are one fixed draw of FuseMoE's N(0, 1) / |N(0, 1)|
    (seed 0), rounded."""
    return FlatTruth(
        "FuseMoE Laplace, k*=2",
        "laplace",
        _np_params([[0.0, 0.3]], [[[0.25], [0.75]]], [0.13, -0.53], [1.26, -0.64], [0.10, 0.30]),
    )


def gaussian_s7(model: int = 1) -> FlatTruth:
    """S7 (docs/theory.md §5.2) Gaussian-gated truth, k* = 3; model 1/2: d = 1, 3/4: d = 2; models 2, 4: type II
    (c*_1 = 0).

    ν* is not stated in docs/theory.md's sources we could read (it lives in the authors' ``models.py``):
    (0.01, 0.02, 0.015) here."""
    if model not in (1, 2, 3, 4):
        raise ValueError("model must be 1, 2, 3 or 4")
    d = 1 if model in (1, 2) else 2
    c = np.array([-0.1, 0.1, 0.5])
    if model in (2, 4):
        c[0] = 0.0
    gam = np.array([0.042824, 0.0175, 0.01])
    A = np.array([0.017324 / 0.042824, -0.0125 / 0.0175, 0.0])
    b = np.array([0.3 + 0.017324 / 0.042824 * 0.1, -0.4 + 0.0125 / 0.0175 * 0.1, 0.2])
    nu = np.array([0.01, 0.02, 0.015])
    pi = np.array([0.3, 0.4, 0.3])
    means = np.repeat(c[:, None], d, axis=1)[None]
    covs = (gam[:, None, None] * np.eye(d)[None])[None]
    coef = np.repeat(A[:, None], d, axis=1)  # duplicated for d = 2
    return FlatTruth(
        f"S7 Gaussian gate, model {model}",
        "gaussian",
        _np_params(np.log(pi)[None], means, b, coef, nu, covs),
        design="joint",
    )


# -- two-level truths (docs/theory.md §6.2; a design of ours, not the HMoE paper's) --------------------------


@dataclass(frozen=True)
class TwoLevelTruth:
    """Two groups of two experts; ``outer``/``inner`` gate families ("softmax" or "laplace")."""

    name: str
    outer: str
    inner: str
    params: HMEParams  # on TreeSpec.complete(2, 2): gate 0 outer, gates 1, 2 inner (groups 0, 1)

    @property
    def tree(self) -> TreeSpec:
        return TreeSpec.complete(2, 2)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        g, e = self.params
        X = rng.uniform(size=(n, 1))
        grp = _draw_leaf(gate_probs(self.outer, g, X, 0), rng)
        leaf = np.empty(n, int)
        for j in (0, 1):
            idx = np.flatnonzero(grp == j)
            leaf[idx] = 2 * j + _draw_leaf(gate_probs(self.inner, g, X[idx], 1 + j), rng)
        mu = e.intercept[leaf, 0] + X[:, 0] * e.coef[leaf, 0, 0]
        return X, mu + np.sqrt(e.cov[leaf, 0, 0]) * rng.normal(size=n)

    def atoms(self) -> TwoLevelAtoms:
        return two_level_atoms(self.params, self.tree, 2)


def two_level_atoms(params: HMEParams, tree: TreeSpec, n_groups: int) -> TwoLevelAtoms:
    """Mixing measure of a two-level tree whose root has ``n_groups`` children, each a gate over leaves."""
    g = params.gates
    inner, start = [], 0
    for j in range(n_groups):
        k = int(tree.n_children[1 + j])
        inner.append(flat_atoms("any", params, index=1 + j, leaves=np.arange(start, start + k)))
        start += k
    return TwoLevelAtoms(np.exp(np.asarray(g.bias)[0, :n_groups]), np.asarray(g.weight)[0, :n_groups], inner)


def hmoe(kind: str) -> TwoLevelTruth:
    """SS, SL or LL truth: group 0 holds the low x, group 1 the high x; experts 15-20x, -5+20x | 5+10x, -10-5x."""
    kind = kind.upper()
    families = {"S": "softmax", "L": "laplace"}
    if kind not in ("SS", "SL", "LL", "LS"):
        raise ValueError("kind must be SS, SL, LL or LS")
    outer, inner = families[kind[0]], families[kind[1]]
    if not gate_family(outer).locations:  # slopes
        ob, ow = [0.0, -5.0], [[0.0], [10.0]]  # P(group 1 | x) = σ(10x - 5)
    else:
        ob, ow = [0.0, 0.0], [[0.2], [0.8]]
    if not gate_family(inner).locations:  # slopes; switch points 0.24 (group 0) and 0.76 (group 1)
        ib, iw = [[0.0, -6.0], [0.0, -19.0]], [[[0.0], [25.0]], [[0.0], [25.0]]]
    else:
        ib, iw = [[0.0, 0.0], [0.0, 0.0]], [[[0.1], [0.45]], [[0.55], [0.9]]]
    bias = np.array([ob] + ib)
    weight = np.array([ow] + iw)
    params = _np_params(bias, weight, [15.0, -5.0, 5.0, -10.0], [-20.0, 20.0, 10.0, -5.0], [0.09, 0.16, 0.12, 0.09])
    return TwoLevelTruth(f"HMoE {kind}", outer, inner, params)
