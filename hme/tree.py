"""Static tree structure of a hierarchical mixture of experts.

A tree is described by its gates (internal nodes) and leaves (experts). Gates are numbered in level
(breadth-first) order, leaves left to right. Every gate has at most ``max_branching`` children; gates with
fewer children (irregular trees) have their surplus child slots masked out.

All structure needed inside ``jit`` is an array derived from the nested description:

* ``edge_leaf`` -- 0/1 incidence matrix of shape (n_gates * max_branching, n_leaves): entry (g*B + c, l) is 1
  when leaf l lies below child c of gate g. Then ``log_path = log_gates.reshape(n, -1) @ edge_leaf`` and
  ``edge_resp = leaf_resp @ edge_leaf.T`` (Jordan & Jacobs' upward/downward passes as two matmuls).
* ``gate_leaf`` -- 0/1 matrix (n_gates, n_leaves): leaf l lies in the subtree of gate g.
* ``child_mask`` -- boolean (n_gates, max_branching): which child slots exist.

Layout of a complete binary tree of depth 2::

                 gate 0
               /        \\
          gate 1        gate 2
          /    \\        /    \\
      leaf 0  leaf 1  leaf 2  leaf 3
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

Nested = int | tuple | list


def _normalize(node: Nested) -> tuple:
    """Canonical nested tuple: a leaf is ``()``, a gate is a tuple of >= 2 children."""
    if isinstance(node, (int, np.integer)) and not isinstance(node, bool):
        if node == 0:
            return ()
        if node < 2:
            raise ValueError(f"a gate needs at least 2 children, got {node}")
        return tuple(() for _ in range(int(node)))
    if isinstance(node, (tuple, list)):
        if len(node) == 0:
            return ()
        if len(node) == 1:
            raise ValueError("a gate needs at least 2 children, got 1")
        return tuple(_normalize(c) for c in node)
    raise TypeError(
        f"tree nodes must be nested tuples/lists (a leaf is ()) or ints (a gate with that many leaves), "
        f"got {type(node).__name__}"
    )


@dataclasses.dataclass(frozen=True)
class TreeSpec:
    """Hashable, static description of an HME tree.

    Parameters
    ----------
    structure : nested tuple
        A leaf is ``()``; a gate is a tuple of its children (at least two). Use :meth:`complete` or
        :meth:`from_nested` rather than building this by hand.

    Examples
    --------
    >>> TreeSpec.complete(depth=2, branching=2).n_leaves
    4
    >>> TreeSpec.complete(depth=3, branching=(4, 4, 2)).n_gates
    21
    >>> TreeSpec.from_nested([(), [2, 2]]).n_leaves   # a leaf beside a depth-2 subtree
    5
    """

    structure: tuple

    def __post_init__(self):
        if self.structure == ():
            raise ValueError("a tree needs at least one gate (two leaves)")

    # -- constructors -------------------------------------------------------------------------------
    @classmethod
    def complete(cls, depth: int, branching: int | Sequence[int] = 2) -> TreeSpec:
        """Complete tree: every gate at level d has ``branching[d]`` children."""
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        if isinstance(branching, (int, np.integer)) and not isinstance(branching, bool):
            branching = (int(branching),) * int(depth)
        branching = tuple(int(b) for b in branching)
        if len(branching) != depth:
            raise ValueError(f"branching has {len(branching)} levels but depth is {depth}")
        if any(b < 2 for b in branching):
            raise ValueError(f"every branching factor must be >= 2, got {branching}")

        def build(level: int) -> tuple:
            if level == depth:
                return ()
            return tuple(build(level + 1) for _ in range(branching[level]))

        return cls(build(0))

    @classmethod
    def from_nested(cls, nested: Nested) -> TreeSpec:
        """Irregular tree from nested lists: ``()`` is a leaf, an int k a gate with k leaves."""
        return cls(_normalize(nested))

    # -- derived structure (cached on the instance; not part of eq/hash) ----------------------------
    @functools.cached_property
    def _tables(self):
        # Assign BFS numbers by walking with explicit positions (tuples may be shared objects).
        bfs = [(self.structure, None, None)]  # node, parent gate, child slot
        gate_ids = []
        parents = []
        k = 0
        while k < len(bfs):
            node, parent, slot = bfs[k]
            k += 1
            if node == ():
                continue
            gid = len(gate_ids)
            gate_ids.append(node)
            parents.append((parent, slot))
            for c, child in enumerate(node):
                bfs.append((child, gid, c))
        n_gates = len(gate_ids)
        max_b = max(len(g) for g in gate_ids)
        child_mask = np.zeros((n_gates, max_b), dtype=bool)
        for g, node in enumerate(gate_ids):
            child_mask[g, : len(node)] = True
        # DFS for leaves (left to right), recording path edges (gate, slot)
        leaf_paths = []
        child_gate = {p: g for g, p in enumerate(parents) if p[0] is not None}

        def dfs(node, gid, path):
            for c, child in enumerate(node):
                edge = (gid, c)
                if child == ():
                    leaf_paths.append(path + [edge])
                else:
                    dfs(child, child_gate[edge], path + [edge])

        dfs(self.structure, 0, [])
        n_leaves = len(leaf_paths)
        edge_leaf = np.zeros((n_gates * max_b, n_leaves), dtype=np.int8)
        gate_leaf = np.zeros((n_gates, n_leaves), dtype=np.int8)
        for l, path in enumerate(leaf_paths):
            for g, c in path:
                edge_leaf[g * max_b + c, l] = 1
                gate_leaf[g, l] = 1
        leaf_depth = np.array([len(p) for p in leaf_paths])
        parent_edge = np.array(
            [-1 if p is None else p * max_b + s for p, s in parents], dtype=np.int64
        )
        return dict(
            n_gates=n_gates,
            max_branching=max_b,
            n_leaves=n_leaves,
            edge_leaf=edge_leaf,
            gate_leaf=gate_leaf,
            child_mask=child_mask,
            leaf_depth=leaf_depth,
            leaf_paths=tuple(tuple(p) for p in leaf_paths),
            parent_edge=parent_edge,
            n_children=child_mask.sum(1),
        )

    @property
    def n_gates(self) -> int:
        return self._tables["n_gates"]

    @property
    def n_leaves(self) -> int:
        return self._tables["n_leaves"]

    @property
    def max_branching(self) -> int:
        return self._tables["max_branching"]

    @property
    def depth(self) -> int:
        return int(self._tables["leaf_depth"].max())

    @property
    def level_branching(self) -> tuple:
        """Branching factors along the leftmost path (per level for a complete tree)."""
        levels, node = [], self.structure
        while node != ():
            levels.append(len(node))
            node = node[0]
        return tuple(levels)

    @property
    def is_complete(self) -> bool:
        """All leaves at one depth and every gate of a level with the same number of children."""
        b = self.level_branching
        return self == TreeSpec.complete(len(b), b)

    @property
    def edge_leaf(self) -> np.ndarray:
        """(n_gates * max_branching, n_leaves) 0/1 incidence of edges on root-to-leaf paths."""
        return self._tables["edge_leaf"]

    @property
    def gate_leaf(self) -> np.ndarray:
        """(n_gates, n_leaves) 0/1: leaf l lies in the subtree of gate g."""
        return self._tables["gate_leaf"]

    @property
    def child_mask(self) -> np.ndarray:
        """(n_gates, max_branching) boolean mask of existing child slots."""
        return self._tables["child_mask"]

    @property
    def n_children(self) -> np.ndarray:
        return self._tables["n_children"]

    @property
    def gate_level(self) -> np.ndarray:
        """(n_gates,) depth of every gate (the root is level 0); gates are in BFS order, parents first."""
        level = np.zeros(self.n_gates, dtype=np.int64)
        pe = self.parent_edge
        for g in range(1, self.n_gates):
            level[g] = level[pe[g] // self.max_branching] + 1
        return level

    @property
    def leaf_paths(self) -> tuple:
        """For each leaf, the tuple of (gate, child slot) edges from the root."""
        return self._tables["leaf_paths"]

    @property
    def parent_edge(self) -> np.ndarray:
        """For each gate, the flat edge index (g*B + c) leading into it, -1 for the root."""
        return self._tables["parent_edge"]

    @property
    def children(self) -> np.ndarray:
        """Node ids of each gate's children, shape (n_gates, max_branching): gates are nodes ``0 … n_gates-1``,
        leaf l is node ``n_gates + l``, and an unused child slot holds -1 (scikit-learn's ``tree_`` convention)."""
        out = np.full((self.n_gates, self.max_branching), -1, dtype=np.int64)
        for g, e in enumerate(self.parent_edge):
            if e >= 0:
                out[e // self.max_branching, e % self.max_branching] = g
        for l, path in enumerate(self.leaf_paths):
            g, c = path[-1]
            out[g, c] = self.n_gates + l
        return out

    @property
    def parent(self) -> np.ndarray:
        """Parent gate of every node (gates first, then leaves, numbered as in :attr:`children`); -1 for the root."""
        out = np.full(self.n_gates + self.n_leaves, -1, dtype=np.int64)
        for g, kids in enumerate(self.children):
            out[kids[kids >= 0]] = g
        return out

    def describe(self) -> str:
        """The structure as indented text, one node per line, e.g. for ``from_nested([(), [2, 2]])``::

            gate 0
            ├── leaf 0
            └── gate 1
                ├── gate 2
                │   ├── leaf 1
                │   └── leaf 2
                └── gate 3
                    ├── leaf 3
                    └── leaf 4
        """
        kids = self.children
        lines = []

        def walk(node: int, prefix: str, last: bool, root: bool) -> None:
            name = f"gate {node}" if node < self.n_gates else f"leaf {node - self.n_gates}"
            lines.append(name if root else prefix + ("└── " if last else "├── ") + name)
            if node < self.n_gates:
                below = [int(k) for k in kids[node] if k >= 0]
                inner = "" if root else prefix + ("    " if last else "│   ")
                for i, k in enumerate(below):
                    walk(k, inner, i == len(below) - 1, False)

        walk(0, "", True, True)
        return "\n".join(lines)

    def __repr__(self) -> str:
        if self.is_complete:
            return f"TreeSpec.complete(depth={self.depth}, branching={self.level_branching})"
        return f"TreeSpec.from_nested({self.structure!r})"
