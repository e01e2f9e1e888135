"""Static model description: the tree, the gate family, the expert family and the feature routing."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .tree import TreeSpec

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
    gate : str or tuple of str
        A registered gate family (:mod:`hme.families`; built in: "softmax", "laplace", "gaussian"):
        softmax gate ``g_c(x) ∝ exp(w_c·x + b_c)`` (multinomial logit, child 0 is the reference with
        ``w_0 = 0, b_0 = 0``), Laplace gate ``g_c(x) ∝ exp(-‖W_c - x‖ + b_c)`` (``b_0 = 0``), or Gaussian
        gate ``g_c(x) ∝ π_c N(x | c_c, Γ_c)`` (Xu, Jordan & Hinton 1995; one-gate trees only: EM then
        maximises the joint likelihood of (x, y), with a closed-form M-step). A tuple with one per-level
        family for each level mixes families, e.g. ``("softmax", "laplace")`` (the HMoE paper's SL).
    expert : str
        A registered expert family (built in: "gaussian", "categorical", "poisson": identity, softmax and log
        links).
    gate_features, expert_features : tuple of int or None
        Columns of ``X`` fed to the gates / experts; ``None`` means all, ``()`` means none
        (an intercept-only gate is a mixture of regressions with constant weights).
    covariance_type : {"full", "diag", "spherical"}
        Gaussian experts with several outputs: full, diagonal or scalar*identity covariance.
    shared_covariance : bool
        One covariance shared by all leaves.
    laplace_smoothing : float
        ε in the smoothed distance ``sqrt(‖W - x‖² + ε²)`` (keeps the gate differentiable at x = W).
    expert_df : float or None
        Student-t experts: fixed degrees of freedom ν for every leaf; None estimates ν_l per leaf.
    shared_coef : tuple of int or None
        Columns of ``X`` (among the expert features) whose expert coefficients are common to all leaves: fixed
        effects, as in flexmix's ``FLXMRglmfix(fixed = ~ ...)``; the other coefficients and the intercepts vary by
        leaf. Single-output Gaussian and Student-t experts, and Poisson experts.
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
    expert_df: float | None = None
    shared_coef: tuple | None = None

    def __post_init__(self):
        from .capacity import CapacityTree
        from .families import expert_family, gate_family, gate_names

        if not isinstance(self.tree, (TreeSpec, CapacityTree)):
            raise TypeError(f"tree must be a TreeSpec, got {type(self.tree).__name__}")
        if isinstance(self.gate, (tuple, list)) and isinstance(self.tree, CapacityTree):
            raise ValueError("per-level gate families need a TreeSpec (a capacity tree's levels are data)")
        if isinstance(self.gate, (tuple, list)):
            kinds = tuple(self.gate)
            per_level = gate_names(per_level=True)
            if len(kinds) != self.tree.depth or any(k not in per_level for k in kinds):
                raise ValueError(
                    f"a per-level gate must list one of {per_level} for each of the tree's {self.tree.depth} "
                    f"levels, got {kinds!r}"
                )
            object.__setattr__(self, "gate", kinds[0] if len(set(kinds)) == 1 else kinds)
        else:
            gate_family(self.gate)
        expert = expert_family(self.expert)
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}")
        if int(self.n_features) < 0:
            raise ValueError("n_features must be >= 0")
        if self.n_targets < expert.min_targets:
            raise ValueError(f"{self.expert} experts need n_targets (outputs or classes) >= {expert.min_targets}")
        if self.n_targets < 1:
            raise ValueError("n_targets must be >= 1")
        if not self.mixed_gates and gate_family(self.gate).models_inputs and self.tree.n_gates != 1:
            raise ValueError(
                f"gate={self.gate!r} models the inputs jointly, p(x, y) = Σ_k π_k p(x | k) p(y | x, θ_k), which "
                f"defines a single gate: use a one-gate tree (depth=1), got {self.tree.n_gates} gates"
            )
        if not self.laplace_smoothing > 0:
            raise ValueError("laplace_smoothing must be > 0")
        if self.expert_df is not None:
            if not expert.has_df:
                raise ValueError(f"expert_df applies to experts with degrees of freedom (student_t), not "
                                 f"{self.expert!r}")
            if isinstance(self.expert_df, bool) or not (isinstance(self.expert_df, (int, float, np.integer,
                                                                                      np.floating))
                                                        and np.isfinite(self.expert_df) and self.expert_df > 0):
                raise ValueError(f"expert_df must be a finite number > 0 (or None to estimate it), got "
                                 f"{self.expert_df!r}")
            object.__setattr__(self, "expert_df", float(self.expert_df))
        object.__setattr__(self, "gate_features", _as_index_tuple(self.gate_features, self.n_features, "gate_features"))
        object.__setattr__(
            self, "expert_features", _as_index_tuple(self.expert_features, self.n_features, "expert_features")
        )
        object.__setattr__(self, "shared_coef", _as_index_tuple(self.shared_coef, self.n_features, "shared_coef"))
        self._check_shared_coef(expert)

    def _check_shared_coef(self, expert) -> None:
        """Validate ``shared_coef`` (already an index tuple) against the expert family and features."""
        if not self.shared_coef:
            object.__setattr__(self, "shared_coef", None)
            return
        if not expert.supports_shared_coef:
            raise ValueError(f"shared_coef (fixed effects) is available for gaussian, student_t and poisson experts, "
                             f"not {self.expert!r}")
        if expert.has_cov and self.n_targets != 1:
            raise ValueError(f"shared_coef with {self.expert} experts needs one output, got {self.n_targets}")
        if self.expert_features is not None:
            missing = [i for i in self.shared_coef if i not in self.expert_features]
            if missing:
                raise ValueError(f"shared_coef columns {missing} are not among the expert features "
                                 f"{self.expert_features}")

    # -- derived sizes --------------------------------------------------------------------------------
    @property
    def shared_rows(self) -> tuple:
        """Rows of the expert design ``[1, X_expert]`` whose coefficients are shared by all leaves (sorted)."""
        if not self.shared_coef:
            return ()
        cols = list(range(self.n_features)) if self.expert_features is None else list(self.expert_features)
        return tuple(sorted(1 + cols.index(i) for i in self.shared_coef))

    @property
    def n_gate_features(self) -> int:
        return self.n_features if self.gate_features is None else len(self.gate_features)

    @property
    def n_expert_features(self) -> int:
        return self.n_features if self.expert_features is None else len(self.expert_features)

    @property
    def n_expert_outputs(self) -> int:
        """Columns of the expert coefficient matrices: m, or C - 1 free logits for categorical experts."""
        return self.expert_family.n_outputs(self.n_targets)

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
    def gate_families(self) -> tuple:
        """The registered family object of every gate, in level order."""
        from .families import gate_family

        return tuple(gate_family(k) for k in self.gate_kinds)

    @property
    def expert_family(self):
        """The registered expert family object."""
        from .families import expert_family

        return expert_family(self.expert)

    @property
    def gate_design_has_intercept(self) -> bool:
        """Whether the gate design is ``[1, X_gate]``: some gate family in the tree reads an intercept."""
        return any(f.intercept for f in self.gate_families)

    @property
    def shares_design(self) -> bool:
        """One intercept-reading gate family that sees exactly the expert features reuses the experts' design
        matrix and Grams."""
        return not self.mixed_gates and self.gate_design_has_intercept and self.gate_features == self.expert_features

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
