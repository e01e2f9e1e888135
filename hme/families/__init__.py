"""Gate and expert families behind one registry.

Each family is one module that owns everything about itself (scores, M-step, penalty, reference conventions,
unconstrained maps, Bayesian priors, predictive distribution) and registers one instance here. The rest of the
package asks the registry by name and reads the family's attributes; it never compares family names. Adding a
family is one new file and one call::

    from hme.families import ExpertFamily, register_expert

    class MyExpert(ExpertFamily):
        name = "my_expert"
        ...

    register_expert(MyExpert())
"""

from __future__ import annotations

from .base import ExpertFamily, GateFamily, GateProblem, take_gates

_GATES: dict[str, GateFamily] = {}
_EXPERTS: dict[str, ExpertFamily] = {}


def register_gate(family: GateFamily, *, replace: bool = False) -> GateFamily:
    """Make ``family`` available as ``gate=family.name``; returns it."""
    return _register(_GATES, family, GateFamily, "gate", replace)


def register_expert(family: ExpertFamily, *, replace: bool = False) -> ExpertFamily:
    """Make ``family`` available as ``expert=family.name``; returns it."""
    return _register(_EXPERTS, family, ExpertFamily, "expert", replace)


def _register(table, family, base, what, replace):
    if not isinstance(family, base):
        raise TypeError(f"a {what} family must be a {base.__name__} instance, got {type(family).__name__}")
    if not isinstance(family.name, str) or not family.name:
        raise ValueError(f"a {what} family needs a non-empty name")
    if family.name in table and not replace and table[family.name] is not family:
        raise ValueError(f"a {what} family named {family.name!r} is already registered (pass replace=True)")
    table[family.name] = family
    return family


def unregister_gate(name: str) -> None:
    _GATES.pop(name, None)


def unregister_expert(name: str) -> None:
    _EXPERTS.pop(name, None)


def gate_family(name) -> GateFamily:
    """The registered gate family ``name``; ``ValueError`` naming the registered ones otherwise."""
    if isinstance(name, str) and name in _GATES:
        return _GATES[name]
    raise ValueError(f"gate must be one of {gate_names()} (or a per-level tuple), got {name!r}")


def expert_family(name) -> ExpertFamily:
    """The registered expert family ``name``; ``ValueError`` naming the registered ones otherwise."""
    if isinstance(name, str) and name in _EXPERTS:
        return _EXPERTS[name]
    raise ValueError(f"expert must be one of {expert_names()}, got {name!r}")


def gate_names(*, per_level: bool | None = None) -> tuple[str, ...]:
    """Registered gate family names (only those that may share a tree with others, for ``per_level=True``)."""
    return tuple(n for n, f in _GATES.items() if per_level is None or f.per_level == per_level)


def expert_names(task: str | None = None) -> tuple[str, ...]:
    """Registered expert family names, optionally only those of ``task`` ("regression", "classification")."""
    return tuple(n for n, f in _EXPERTS.items() if task is None or f.task == task)


from . import categorical, gaussian, gaussian_gate, laplace, poisson, softmax, student_t  # noqa: E402  (they register)

__all__ = [
    "ExpertFamily",
    "GateFamily",
    "GateProblem",
    "categorical",
    "expert_family",
    "expert_names",
    "gate_family",
    "gate_names",
    "gaussian",
    "gaussian_gate",
    "laplace",
    "poisson",
    "register_expert",
    "register_gate",
    "softmax",
    "student_t",
    "take_gates",
    "unregister_expert",
    "unregister_gate",
]
