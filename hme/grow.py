r"""Growing and pruning the tree: "to whatever depth helps".

Growth starts from one expert and splits leaves best-first (in the spirit of Waterhouse & Robinson 1996,
"Constructive algorithms for hierarchical mixtures of experts", and Fritsch, Finke & Waibel 1997, "Adaptively
growing hierarchical mixtures of experts"). At each step, for the current tree with leaf posteriors h_tl:

1. **Candidate splits of the leaves.** Leaf l's rows, weighted by ``w_t h_tl``, get a local two-expert fit (a
   new binary gate over two experts; the default emEM start), several leaves in one vmapped program
   (:func:`hme.em.fit_em_weightings`). Its gain is the local log-likelihood minus what leaf l's own expert
   scores on the same weighted rows,

   .. math::  Δ_l = \sum_t w_t h_{tl} \log p_{\text{split}}(y_t \mid x_t) - \sum_t w_t h_{tl} \log p_l(y_t \mid x_t),

   the increase of the expected complete-data log-likelihood with the rest of the tree held fixed. A leaf's local
   fit is kept while the leaf exists, so a round fits only the two leaves the last split made; before growth
   stops, every leaf is fitted again on the current tree.
2. **The best split is tried in the whole tree**: the leaf is replaced by the local gate and its two experts,
   every other gate and expert keeps its parameters, and EM runs :data:`TRIAL_ITER` iterations of the whole
   tree from there (the issue's "a few EM iterations of the whole tree"; the current tree has run as many
   more before the round, so neither side of the comparison has had longer). The split is kept when the
   criterion improves: BIC (``-2 log L + k log n``), ICL (BIC plus twice the posterior entropy, Biernacki,
   Celeux & Govaert 2000) or the held-out log-likelihood (``-2 Σ log p`` on validation rows). When it does not,
   the next-best leaf whose estimated gain still pays for its parameters is tried.
3. Growth stops when no split improves the criterion or at ``max_leaf_nodes``. **Pruning** then collapses a
   gate whose children are all leaves into its heavier child while that improves the criterion (Waterhouse &
   Robinson 1995, "Pruning and growing hierarchical mixtures of experts"), trying the collapses in order of a
   bound on their BIC from the assembled start. The chosen tree finally runs EM to convergence from where it
   is and, as further restarts of the same compiled fit, from the default emEM starts; the best run stands
   (EM from an assembled start can stay in the basin a smaller tree left it).

Trees grow irregular (one branch deeper than another). Every tree is fitted inside one fixed-capacity tree of
``max_leaf_nodes`` leaves (:mod:`hme.capacity`; without a cap, powers of two), so the whole growth compiles a
handful of EM programs, not one per tree tried. Gate families may differ per level (a per-level tuple; levels
below its end use its last family; such trees are fitted tree by tree); Gaussian gates, which model the inputs
jointly, define a single gate and do not grow.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import capacity
from .em import fit_em, fit_em_weightings
from .families import gate_family
from .fitting import EMResult
from .inference import n_free_parameters
from .model import joint, log_likelihood, make_design, posteriors, prepare_targets
from .params import ExpertParams, GateParams, HMEParams, zeros_params
from .spec import ModelSpec
from .tree import TreeSpec

CRITERIA = ("bic", "icl", "validation")
#: a binary gate over two leaves
SPLIT = ((), ())
#: next-best splits tried in the whole tree, at most, after the best one failed the criterion
MAX_TRIES = 2
#: EM iterations of the whole tree after a split or a collapse (and of the current tree before each round of
#: splits, so that both sides of a comparison have run as long); the chosen tree then runs to convergence
TRIAL_ITER = 30


# -- tree surgery on nested structures --------------------------------------------------------------------


def node_paths(structure: tuple) -> tuple[list, list]:
    """(gate paths in level order, leaf paths left to right): a node's path is its tuple of child slots from the
    root, the numbering :class:`hme.tree.TreeSpec` gives its gates and leaves."""
    gates, queue = [], [((), structure)]
    while queue:
        path, node = queue.pop(0)
        if node != ():
            gates.append(path)
            queue += [(path + (c,), child) for c, child in enumerate(node)]
    leaves = []

    def dfs(path, node):
        if node == ():
            leaves.append(path)
        for c, child in enumerate(node):
            dfs(path + (c,), child)

    dfs((), structure)
    return gates, leaves


def replace_node(structure: tuple, path: tuple, new: tuple) -> tuple:
    """``structure`` with the node at ``path`` replaced by ``new``."""
    if not path:
        return new
    c = path[0]
    return structure[:c] + (replace_node(structure[c], path[1:], new),) + structure[c + 1 :]


def _gather(gate_rows: list, leaf_rows: list) -> HMEParams:
    """Parameters assembled row by row: ``gate_rows`` [(GateParams, index)] in level order, ``leaf_rows``
    [(ExpertParams, index)] left to right."""

    def stack(rows, cls):
        fields = {}
        for f in cls._fields:
            first = getattr(rows[0][0], f)
            fields[f] = None if first is None else np.stack([np.asarray(getattr(p, f))[i] for p, i in rows])
        return cls(**fields)

    return HMEParams(stack(gate_rows, GateParams), stack(leaf_rows, ExpertParams))


# -- the model at each step ------------------------------------------------------------------------------


class GrowthStep(NamedTuple):
    """One step of the growth path: the tree tried and what it scored."""

    action: str  # "start", "split leaf <path>", "prune gate <path>"
    structure: tuple  # the tree tried (``()`` for the single expert)
    n_leaves: int
    n_parameters: int
    log_likelihood: float  # training Σ_t w_t log p(y_t | x_t)
    validation_log_likelihood: float  # NaN without validation rows
    criterion: float  # lower is better
    accepted: bool
    seconds: float


class GrowthResult(NamedTuple):
    """The grown tree: its structure (``()`` when a single expert won), the spec and EM fit of the final tree
    (for a single expert a two-leaf tree whose experts are identical and whose gate is uniform, which is that
    expert), and the growth path."""

    structure: tuple
    spec: ModelSpec
    result: EMResult
    path: list


@dataclasses.dataclass
class _Fit:
    """A tree's fit: its own spec and result, and for a capacity fit the capacity spec, parameters and layout."""

    spec: ModelSpec
    result: EMResult
    capacity: tuple | None = None  # (capacity spec, its HMEParams, Layout)


@dataclasses.dataclass
class _Candidate:
    structure: tuple  # () for a single expert
    spec: ModelSpec
    result: EMResult
    k: int
    ll: float
    val_ll: float
    criterion: float
    capacity: tuple | None = None


def single_expert_parameters(spec: ModelSpec) -> int:
    """Free parameters of one expert of ``spec``'s families (coefficients and its noise), for BIC."""
    two = dataclasses.replace(spec, tree=TreeSpec(SPLIT), gate=gate_at_level(spec.gate, 0))
    noise = spec.expert_family.n_noise_parameters(two)
    return (spec.n_expert_features + 1) * spec.n_expert_outputs + (noise if spec.shared_covariance else noise // 2)


def gate_at_level(gate, level: int) -> str:
    """The gate family of ``level`` for a gate given as a name or a per-level tuple (its last entry repeats)."""
    if isinstance(gate, str):
        return gate
    return gate[min(level, len(gate) - 1)]


class Grower:
    """The state of one growth: data, options, and how to fit a tree from a start (see :func:`grow_tree`)."""

    def __init__(self, template: ModelSpec, gate, X, y, w, fit: Callable, local_options: dict, criterion: str,
                 validation: tuple | None, max_leaf_nodes: int, fixed_capacity: bool = True):
        self.template, self.gate, self.fit, self.local_options = template, gate, fit, local_options
        self.X, self.y, self.w = X, y, w
        self.criterion_name, self.validation, self.max_leaf_nodes = criterion, validation, max_leaf_nodes
        self.n_eff = float(np.sum(w))
        self.path: list[GrowthStep] = []
        self.local_fits: dict = {}  # leaf path -> (gain, (local fits' result, index))
        # capacity trees hold one gate family and binary gates (hme.capacity)
        self.fixed_capacity = fixed_capacity and isinstance(gate, str)
        self.n_rows = int(np.count_nonzero(w))

    def capacity_for(self, n_leaves: int) -> int:
        """The capacity a tree of ``n_leaves`` leaves is fitted in: ``max_leaf_nodes`` (one program for the whole
        growth), or without a cap the next power of two (at least 4), and never more than the rows."""
        if np.isfinite(self.max_leaf_nodes):
            cap = int(self.max_leaf_nodes)
        else:
            cap = max(4, 2 ** int(np.ceil(np.log2(n_leaves))))
        return max(min(cap, self.n_rows), n_leaves, 2)

    def run(self, spec: ModelSpec, start: HMEParams, fresh: bool, max_iter: int | None = None) -> _Fit:
        """``spec``'s tree fitted from ``start`` by ``self.fit`` (see :func:`grow_tree`; at most ``max_iter``
        EM iterations when given), in a capacity tree when growth uses them."""
        if not self.fixed_capacity:
            return _Fit(spec, self.fit(spec, start, fresh, max_iter=max_iter))
        structure = spec.tree.structure
        K = self.capacity_for(spec.tree.n_leaves)
        cspec = capacity.capacity_spec(spec, K)
        lay = capacity.layout(structure, K)
        res = self.fit(cspec, capacity.embed(cspec, start), fresh, layout=lay, max_iter=max_iter)
        return _Fit(spec, capacity.tree_result(res, structure), (cspec, jax.device_get(res.params), lay))

    def leaf_posteriors(self, fitted: _Fit | _Candidate) -> np.ndarray:
        """(n, L) leaf posteriors of a fit (or of a candidate's fit) on the training rows."""
        if fitted.capacity is None:
            return np.asarray(posteriors(fitted.spec, jax.device_get(fitted.result.params), self.X, self.y)["leaf"],
                              np.float64)
        return np.asarray(_capacity_joint(fitted.capacity, self.X, self.y).leaf_post,
                          np.float64)[:, : fitted.spec.tree.n_leaves]

    def row_log_lik(self, fitted: _Fit | _Candidate, X, y) -> np.ndarray:
        """(n,) log p(y_t | x_t) of a fit on rows (X, y)."""
        if fitted.capacity is None:
            return np.asarray(log_likelihood(fitted.spec, jax.device_get(fitted.result.params), X, y), np.float64)
        return np.asarray(_capacity_joint(fitted.capacity, X, y).log_lik, np.float64)

    def spec_for(self, structure: tuple) -> ModelSpec:
        tree = TreeSpec(structure)
        if isinstance(self.gate, str):
            gate = self.gate
        else:
            gate = tuple(gate_at_level(self.gate, lv) for lv in range(tree.depth))
        return dataclasses.replace(self.template, tree=tree, gate=gate)

    def n_parameters(self, structure: tuple) -> int:
        if structure != ():
            return n_free_parameters(self.spec_for(structure))
        return single_expert_parameters(self.spec_for(SPLIT))

    def score(self, structure: tuple, fitted: _Fit, action: str, t0: float, record: bool = True) -> _Candidate:
        spec, result = fitted.spec, fitted.result
        ll = float(result.log_likelihood)
        k = self.n_parameters(structure)
        crit = float(-2.0 * ll + k * np.log(self.n_eff))
        val_ll = float("nan")
        if self.validation is not None:
            Xv, yv, wv = self.validation
            val_ll = float(np.sum(wv * self.row_log_lik(fitted, Xv, yv)))
        if self.criterion_name == "icl" and structure != ():
            h = self.leaf_posteriors(fitted)
            crit += 2.0 * float(-np.sum(self.w[:, None] * np.where(h > 0, h * np.log(np.where(h > 0, h, 1)), 0)))
        elif self.criterion_name == "validation":
            crit = -2.0 * val_ll
        cand = _Candidate(structure, spec, result, k, ll, val_ll, crit, fitted.capacity)
        if not record:
            return cand
        self.path.append(GrowthStep(action=action, structure=structure, n_leaves=max(len(node_paths(structure)[1]), 1),
                                    n_parameters=k, log_likelihood=ll, validation_log_likelihood=val_ll,
                                    criterion=crit, accepted=False, seconds=time.perf_counter() - t0))
        return cand

    def accept(self):
        self.path[-1] = self.path[-1]._replace(accepted=True)

    def continue_fit(self, cur: _Candidate, fresh: bool = False, max_iter: int | None = TRIAL_ITER) -> _Candidate:
        """The current (accepted) tree run further from its parameters (``max_iter`` more EM iterations; with
        ``fresh``, to convergence beside the default starts), unless it has converged; the last accepted step of
        the path then shows the new fit."""
        if bool(cur.result.converged) and not fresh:
            return cur
        t0 = time.perf_counter()
        fitted = self.run(cur.spec, jax.device_get(cur.result.params), fresh=fresh, max_iter=max_iter)
        new = self.score(cur.structure, fitted, "", t0, record=False)
        if new.criterion > cur.criterion and not fresh:
            return cur
        i = max(j for j, step in enumerate(self.path) if step.accepted)
        step = self.path[i]
        self.path[i] = step._replace(log_likelihood=new.ll, validation_log_likelihood=new.val_ll,
                                     criterion=new.criterion, seconds=step.seconds + time.perf_counter() - t0)
        return new

    # -- steps -------------------------------------------------------------------------------------------

    def single_expert(self) -> _Candidate:
        """One expert: a two-leaf tree started with identical experts and a uniform gate, which EM keeps
        identical (the symmetric start is a fixed point of the posteriors), so it fits the single expert."""
        t0 = time.perf_counter()
        spec = self.spec_for(SPLIT)
        dtype = jax.dtypes.canonicalize_dtype(np.asarray(self.X).dtype)  # float64 data without x64: float32
        return self.score((), self.run(spec, zeros_params(spec, dtype), fresh=False), "start", t0)

    def leaf_gains(self, cur: _Candidate, refresh: bool) -> tuple[list, np.ndarray, list, bool]:
        """(leaf paths, Δ_l per leaf, the local fits, whether every Δ_l is of ``cur``).

        Local fits are kept per leaf path: a split adds two leaves and leaves every other path as it was, so
        a round fits only the leaves that have none (the new children), padded to 2 fits, and the other leaves
        keep the gain estimated on an earlier tree (the rest of the tree has moved a little since).
        ``refresh`` fits every leaf again (padded to the capacity: one more compiled program)."""
        params = jax.device_get(cur.result.params)
        spec = cur.spec
        if cur.structure == ():
            paths = [()]
            experts = jax.tree_util.tree_map(lambda a: a[:1], params.experts)
        else:
            paths = node_paths(cur.structure)[1]
            experts = params.experts
        self.local_fits = {p: v for p, v in self.local_fits.items() if p in paths and not refresh}
        need = [i for i, p in enumerate(paths) if p not in self.local_fits]
        if need:
            if cur.structure == ():
                h = np.ones((self.X.shape[0], 1))
            else:
                h = self.leaf_posteriors(cur)
            design = make_design(spec, np.asarray(self.X))
            Y = prepare_targets(spec, np.asarray(self.y), np.asarray(self.X).dtype)
            own = np.asarray(spec.expert_family.log_prob(spec, experts, design.expert, Y)[0], np.float64)  # (n, L)
            W = (self.w[:, None] * h).T  # (L, n)
            base = np.sum(W * own.T, axis=1)
            families = {i: gate_at_level(self.gate, len(paths[i])) for i in need}
            for fam in sorted(set(families.values())):
                idx = [i for i in need if families[i] == fam]
                self.fit_locally(fam, idx, paths, W, base)
        gains = np.array([self.local_fits[p][0] for p in paths])
        local = [self.local_fits[p][1] for p in paths]
        return paths, gains, local, len(need) == len(paths)

    def fit_locally(self, fam: str, idx: list, paths: list, W: np.ndarray, base: np.ndarray) -> None:
        """Local two-expert fits of leaves ``idx`` (rows weighted by ``W[i]``) in one vmapped program, and their
        gains over ``base`` (each leaf's own expert on those rows), into ``self.local_fits``."""
        Wf = W[idx]
        # the fits padded to 2 (a round after a split), or to the cap (without one: the next power of two)
        if len(idx) <= 2:
            width = 2
        elif np.isfinite(self.max_leaf_nodes):
            width = int(self.max_leaf_nodes)
        else:
            width = 2 ** int(np.ceil(np.log2(len(idx))))
        pad = width - len(idx)
        if pad > 0:
            Wf = np.concatenate([Wf, np.repeat(Wf[:1], pad, axis=0)])
        ok = Wf.sum(axis=1) > 0
        Wf[~ok] = self.w  # an empty leaf: any valid weighting, its gain stays -inf
        lspec = dataclasses.replace(self.template, tree=TreeSpec(SPLIT), gate=fam)
        res = jax.device_get(fit_em_weightings(lspec, self.X, self.y, Wf, **self.local_options))
        for j, i in enumerate(idx):
            gain = -np.inf
            healthy = np.all(np.asarray(res.restart_leaf_count)[j, int(res.best_restart[j])] >= 1.0) and ok[j]
            if healthy and np.isfinite(res.log_likelihood[j]):
                gain = float(res.log_likelihood[j]) - base[i]
            self.local_fits[paths[i]] = (gain, (res, j))

    def split(self, cur: _Candidate, path: tuple, local) -> _Candidate:
        t0 = time.perf_counter()
        res, j = local
        lp = jax.tree_util.tree_map(lambda a: None if a is None else np.asarray(a)[j], res.params,
                                    is_leaf=lambda a: a is None)
        if cur.structure == ():
            structure, start = SPLIT, lp
        else:
            structure = replace_node(cur.structure, path, SPLIT)
            old = jax.device_get(cur.result.params)
            og, ol = node_paths(cur.structure)
            ng, nl = node_paths(structure)
            gate_rows = [(old.gates, og.index(g)) if g in og else (lp.gates, 0) for g in ng]
            leaf_rows = [(old.experts, ol.index(leaf)) if leaf in ol else (lp.experts, leaf[-1]) for leaf in nl]
            start = _gather(gate_rows, leaf_rows)
        return self.score(structure, self.trial(self.spec_for(structure), start), f"split leaf {path}", t0)

    def trial(self, spec: ModelSpec, start: HMEParams) -> _Fit:
        """A tree tried: :data:`TRIAL_ITER` EM iterations from the start assembled from the current tree."""
        return self.run(spec, start, fresh=False, max_iter=TRIAL_ITER)

    def collapsed(self, cur: _Candidate, path: tuple, mass: np.ndarray) -> tuple[tuple, HMEParams | None, float]:
        """The tree with the gate at ``path`` (all of whose children are leaves) replaced by its heavier child's
        expert (``mass``: each leaf's posterior weight), its assembled start, and for BIC an upper bound of its
        criterion from the start's log-likelihood, which its refit can only raise (+∞ for other criteria and
        for the single expert)."""
        params = jax.device_get(cur.result.params)
        og, ol = node_paths(cur.structure)
        children = [ol.index(leaf) for leaf in ol if leaf[:-1] == path]
        keep = children[int(np.argmax(mass[children]))]
        structure = replace_node(cur.structure, path, ())
        if structure == ():
            return structure, None, np.inf
        ng, nl = node_paths(structure)
        gate_rows = [(params.gates, og.index(g)) for g in ng]
        leaf_rows = [(params.experts, keep if leaf == path else ol.index(leaf)) for leaf in nl]
        start = _gather(gate_rows, leaf_rows)
        bound = np.inf
        if self.criterion_name == "bic":
            spec = self.spec_for(structure)
            if self.fixed_capacity:
                cspec = capacity.capacity_spec(spec, self.capacity_for(spec.tree.n_leaves))
                fitted = _Fit(spec, None, (cspec, capacity.embed(cspec, start),
                                           capacity.layout(structure, cspec.tree.n_leaves)))
                ll = float(np.sum(self.w * self.row_log_lik(fitted, self.X, self.y)))
            else:
                ll = float(np.sum(self.w * np.asarray(log_likelihood(spec, start, self.X, self.y))))
            bound = -2.0 * ll + self.n_parameters(structure) * np.log(self.n_eff)
        return structure, start, bound

    def collapse(self, path: tuple, structure: tuple, start: HMEParams | None) -> _Candidate:
        """The collapsed tree of :meth:`collapsed` refitted and scored."""
        t0 = time.perf_counter()
        if structure == ():
            return self.single_expert()
        return self.score(structure, self.trial(self.spec_for(structure), start), f"prune gate {path}", t0)


def grow_tree(
    template: ModelSpec,
    X,
    y,
    *,
    sample_weight=None,
    gate=None,
    max_leaf_nodes: int | None = 8,
    criterion: str = "bic",
    validation: tuple | None = None,
    prune: bool = True,
    fit: Callable | None = None,
    local_options: dict | None = None,
    fixed_capacity: bool = True,
) -> GrowthResult:
    r"""Grow (and prune) an HME's tree by the algorithm of this module's docstring.

    Parameters
    ----------
    template : ModelSpec whose tree is ignored: features, expert family, outputs and covariance carry over
    X : (n, p); y as :func:`hme.fit_em` takes it; sample_weight : (n,) frequency weights
    gate : a gate family name or a per-level tuple (default: ``template.gate``)
    max_leaf_nodes : at most this many leaves (None: as many as the criterion supports)
    criterion : "bic", "icl" or "validation" (then ``validation=(X_val, y_val, w_val)`` is required); lower wins
    prune : collapse gates over leaves while the criterion improves, once growth stops
    fit : ``fit(spec, start_params, fresh, layout=None, max_iter=None) -> EMResult``, the whole-tree fit from
        ``start_params`` alone (``fresh=False``), or the best of a run from it and of the default starts' runs
        (``fresh=True``; default :func:`hme.fit_em` on X, y, sample_weight with its defaults,
        ``extra_start=start_params``), with at most ``max_iter`` EM iterations when it is given (the trees tried
        get :data:`TRIAL_ITER`). With fixed capacity, ``spec`` has a :class:`hme.capacity.CapacityTree` and
        ``layout`` is the tree (pass it to :func:`hme.fit_em`)
    fixed_capacity : fit every tree tried in one capacity tree (:mod:`hme.capacity`; ``max_leaf_nodes`` leaves,
        or without a cap powers of two), so the whole growth compiles its programs once instead of once per
        tree. Per-level gate families always fit tree by tree
    local_options : keyword arguments of the local split fits (:func:`hme.em.fit_em_weightings`: ridges,
        ``max_iter``, ``tol``, ``n_candidates``...)
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if criterion == "validation" and validation is None:
        raise ValueError("criterion='validation' needs validation=(X_val, y_val, w_val)")
    if max_leaf_nodes is not None and not (isinstance(max_leaf_nodes, (int, np.integer)) and max_leaf_nodes >= 1):
        raise ValueError(f"max_leaf_nodes must be a positive integer, got {max_leaf_nodes!r}")
    gate = template.gate if gate is None else gate
    for lv in range(2):
        if gate_family(gate_at_level(gate, lv)).models_inputs:
            raise ValueError(f"gate={gate!r} models the inputs and defines a single gate: it cannot grow a tree")
    X = np.asarray(X)
    if np.issubdtype(X.dtype, np.floating):  # float64 data without x64 is fitted in float32, as fit_em does
        X = X.astype(jax.dtypes.canonicalize_dtype(X.dtype), copy=False)
    w = np.ones(X.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if fit is None:
        def fit(spec, start, fresh, layout=None, max_iter=None):
            iters = {} if max_iter is None else dict(max_iter=max_iter)
            if fresh:
                return fit_em(spec, X, y, sample_weight=w, extra_start=start, layout=layout, **iters)
            return fit_em(spec, X, y, sample_weight=w, start_params=start, layout=layout, **iters)
    cap = np.inf if max_leaf_nodes is None else int(max_leaf_nodes)
    g = Grower(template, gate, X, y, w, fit, dict(local_options or {}), criterion, validation, cap, fixed_capacity)
    cur = g.single_expert()
    g.accept()
    while len(node_paths(cur.structure)[1]) < max_leaf_nodes:
        cur = g.continue_fit(cur)  # as many iterations as the split trees will get
        paths, gains, local, current = g.leaf_gains(cur, refresh=False)
        grown = _try_splits(g, cur, paths, gains, local, criterion)
        if grown is None and not current:  # before stopping, every leaf's gain on this tree
            paths, gains, local, _ = g.leaf_gains(cur, refresh=True)
            grown = _try_splits(g, cur, paths, gains, local, criterion)
        if grown is None:
            break
        cur = grown
    while prune and cur.structure != ():
        gates = node_paths(cur.structure)[0]
        leaves = set(node_paths(cur.structure)[1])
        over_leaves = [p for p in gates if all(p + (c,) in leaves for c in range(len(_node(cur.structure, p))))]
        mass = g.w @ g.leaf_posteriors(cur)
        options = [(p, *g.collapsed(cur, p, mass)) for p in over_leaves]
        # most promising first (the lowest bound on the criterion); the first collapse that improves it is
        # kept, as splits are, and at most 1 + MAX_TRIES collapses are refitted per round
        options.sort(key=lambda o: o[3])
        pruned = None
        for tries, (p, structure, start, _) in enumerate(options):
            if tries > MAX_TRIES:
                break
            cand = g.collapse(p, structure, start)
            if cand.criterion < cur.criterion:
                g.accept()
                pruned = cand
                break
        if pruned is None:
            break
        cur = pruned
    if cur.structure != ():  # the chosen tree to convergence, beside the default starts
        cur = g.continue_fit(cur, fresh=True, max_iter=None)
    return GrowthResult(structure=cur.structure, spec=cur.spec, result=cur.result, path=g.path)


def _try_splits(g: Grower, cur: _Candidate, paths: list, gains: np.ndarray, local: list, criterion: str):
    """The best split by estimated gain tried in the whole tree, then the next-best while their gain still pays
    for their parameters (at most ``1 + MAX_TRIES``); the first that improves the criterion, or None."""
    tries = 0
    for i in np.argsort(-gains):
        if not np.isfinite(gains[i]):
            break
        k_new = g.n_parameters(SPLIT if cur.structure == () else replace_node(cur.structure, paths[i], SPLIT))
        pays = 2.0 * gains[i] > (k_new - cur.k) * np.log(g.n_eff) if criterion != "validation" else gains[i] > 0
        if tries and not pays:
            break
        cand = g.split(cur, paths[i], local[i])
        tries += 1
        if cand.criterion < cur.criterion:
            g.accept()
            return cand
        if tries > MAX_TRIES:
            break
    return None


def _node(structure: tuple, path: tuple) -> tuple:
    for c in path:
        structure = structure[c]
    return structure


def _capacity_joint(fitted_capacity: tuple, X, y):
    """:func:`hme.model.joint` of a capacity fit ``(capacity spec, params, layout)`` on rows (X, y), evaluated op
    by op under its layout: its arrays are concrete, so nothing is traced and no program is compiled per tree."""
    cspec, cparams, lay = fitted_capacity
    X = jnp.asarray(X)
    with capacity.bind(lay):
        return joint(cspec, cparams, make_design(cspec, X), prepare_targets(cspec, jnp.asarray(y), X.dtype))
