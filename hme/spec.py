"""Static model description: the tree, the gate family, the expert family and the feature routing."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .tree import TreeSpec

GATE_FAMILIES = ("softmax", "laplace", "gaussian")
EXPERT_FAMILIES = ("gaussian", "categorical", "poisson")
COVARIANCE_TYPES = ("full", "diag", "spherical")


def _as_index_tuple(idx, n_features: int, what: str):
    if idx is None:
        return None
    out = tuple(int(i) for i in idx)
    for i in out:
        if not 0 <= i < n_features:
            raise ValueError(f"{what} index {i} is out of range for {n_features} features")
    if len(set(out)) != len(out):
        raise ValueError(f"{what} contains duplicate indices: {out}")
    return out


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything about an HME that is fixed at compile time (hashable; a ``jit`` static argument).

    Parameters
    ----------
    tree : TreeSpec
        The tree of gates and leaves.
    n_features : int
        Number of columns of the input matrix ``X``.
    n_targets : int
        Gaussian/Poisson experts: number of outputs ``m``. Categorical experts: number of classes ``C``.
    gate : {"softmax", "laplace", "gaussian"}
        Softmax gate ``g_c(x) ∝ exp(w_c·x + b_c)`` (multinomial logit, child 0 is the reference with
        ``w_0 = 0, b_0 = 0``), Laplace gate ``g_c(x) ∝ exp(-‖W_c - x‖ + b_c)`` (``b_0 = 0``), or Gaussian
        gate ``g_c(x) ∝ π_c N(x | c_c, Γ_c)`` (Xu, Jordan & Hinton 1995; one-gate trees only: EM then
        maximises the joint likelihood of (x, y), with a closed-form M-step). A tuple with one of
        "softmax"/"laplace" per level mixes families, e.g. ``("softmax", "laplace")`` (the HMoE paper's SL).
    expert : {"gaussian", "categorical", "poisson"}
        Expert family (identity, softmax and log links).
    gate_features, expert_features : tuple of int or None
        Columns of ``X`` fed to the gates / experts; ``None`` means all, ``()`` means none
        (an intercept-only gate is a mixture of regressions with constant weights).
    covariance_type : {"full", "diag", "spherical"}
        Gaussian experts with several outputs: full, diagonal or scalar*identity covariance.
    shared_covariance : bool
        One covariance shared by all leaves.
    laplace_smoothing : float
        ε in the smoothed distance ``sqrt(‖W - x‖² + ε²)`` (keeps the gate differentiable at x = W).
    """

    tree: TreeSpec
    n_features: int
    n_targets: int = 1
    gate: str = "softmax"
    expert: str = "gaussian"
    gate_features: tuple | None = None
    expert_features: tuple | None = None
    covariance_type: str = "full"
    shared_covariance: bool = False
    laplace_smoothing: float = 1e-6

    def __post_init__(self):
        if not isinstance(self.tree, TreeSpec):
            raise TypeError(f"tree must be a TreeSpec, got {type(self.tree).__name__}")
        if isinstance(self.gate, (tuple, list)):
            kinds = tuple(self.gate)
            if len(kinds) != self.tree.depth or any(k not in ("softmax", "laplace") for k in kinds):
                raise ValueError(
                    f"a per-level gate must list 'softmax' or 'laplace' for each of the tree's {self.tree.depth} "
                    f"levels, got {kinds!r}"
                )
            object.__setattr__(self, "gate", kinds[0] if len(set(kinds)) == 1 else kinds)
        elif self.gate not in GATE_FAMILIES:
            raise ValueError(f"gate must be one of {GATE_FAMILIES} or a per-level tuple, got {self.gate!r}")
        if self.expert not in EXPERT_FAMILIES:
            raise ValueError(f"expert must be one of {EXPERT_FAMILIES}, got {self.expert!r}")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}")
        if int(self.n_features) < 0:
            raise ValueError("n_features must be >= 0")
        if self.expert == "categorical" and self.n_targets < 2:
            raise ValueError("categorical experts need n_targets (the number of classes) >= 2")
        if self.n_targets < 1:
            raise ValueError("n_targets must be >= 1")
        if self.gate == "gaussian" and self.tree.n_gates != 1:
            raise ValueError(
                "gate='gaussian' models the inputs jointly, p(x, y) = Σ_k π_k N(x | c_k, Γ_k) p(y | x, θ_k), which "
                f"defines a single gate: use a one-gate tree (depth=1), got {self.tree.n_gates} gates"
            )
        if not self.laplace_smoothing > 0:
            raise ValueError("laplace_smoothing must be > 0")
        object.__setattr__(self, "gate_features", _as_index_tuple(self.gate_features, self.n_features, "gate_features"))
        object.__setattr__(
            self, "expert_features", _as_index_tuple(self.expert_features, self.n_features, "expert_features")
        )

    # -- derived sizes --------------------------------------------------------------------------------
    @property
    def n_gate_features(self) -> int:
        return self.n_features if self.gate_features is None else len(self.gate_features)

    @property
    def n_expert_features(self) -> int:
        return self.n_features if self.expert_features is None else len(self.expert_features)

    @property
    def n_expert_outputs(self) -> int:
        """Columns of the expert coefficient matrices: m, or C - 1 free logits for categorical experts."""
        return self.n_targets - 1 if self.expert == "categorical" else self.n_targets

    @property
    def mixed_gates(self) -> bool:
        """Different gate families on different levels (e.g. ``("softmax", "laplace")``: docs/theory.md's SL)."""
        return isinstance(self.gate, tuple)

    @property
    def gate_kinds(self) -> tuple:
        """The gate family of every gate, in level order."""
        if not self.mixed_gates:
            return (self.gate,) * self.tree.n_gates
        return tuple(self.gate[lv] for lv in self.tree.gate_level)

    @property
    def laplace_gates(self):
        """(n_gates,) NumPy bool: which gates are Laplace gates (static; used to split mixed-family trees)."""
        import numpy as np

        return np.asarray([k == "laplace" for k in self.gate_kinds], dtype=bool)

    @property
    def gate_design_has_intercept(self) -> bool:
        """Softmax gates (alone or mixed) read ``[1, X_gate]``; Laplace and Gaussian gates read ``X_gate``."""
        return self.gate == "softmax" or self.mixed_gates

    @property
    def shares_design(self) -> bool:
        """Softmax gates that see exactly the expert features reuse the experts' design matrix and Grams."""
        return self.gate == "softmax" and self.gate_features == self.expert_features

    def with_tree(self, tree: TreeSpec) -> ModelSpec:
        return dataclasses.replace(self, tree=tree)


def make_spec(
    n_features: int,
    *,
    depth: int = 1,
    branching: int | Sequence[int] = 2,
    tree: TreeSpec | None = None,
    **kwargs,
) -> ModelSpec:
    """Convenience constructor: ``make_spec(8, depth=4)`` is a binary depth-4 Gaussian HME on 8 features."""
    if tree is None:
        tree = TreeSpec.complete(depth, branching)
    return ModelSpec(tree=tree, n_features=n_features, **kwargs)
