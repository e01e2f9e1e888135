import numpy as np
import pytest

from hme import TreeSpec


def test_complete_tree_sizes():
    t = TreeSpec.complete(4, 2)
    assert (t.n_gates, t.n_leaves, t.max_branching, t.depth) == (15, 16, 2, 4)
    t = TreeSpec.complete(3, (4, 4, 2))
    assert (t.n_gates, t.n_leaves, t.max_branching) == (1 + 4 + 16, 32, 4)
    assert t.is_complete


def test_complete_layout_is_heap_order():
    """Gate m at level d has children m*b + c at level d+1: leaf l's path is its base-b digits."""
    t = TreeSpec.complete(3, 2)
    for leaf, path in enumerate(t.leaf_paths):
        digits = [c for _, c in path]
        assert int("".join(map(str, digits)), 2) == leaf
        gates = [g for g, _ in path]
        assert gates[0] == 0 and gates[1] == 1 + digits[0] and gates[2] == 3 + 2 * digits[0] + digits[1]


def test_incidence_matrices():
    t = TreeSpec.from_nested([(), [2, 3]])
    assert (t.n_gates, t.n_leaves, t.max_branching) == (4, 6, 3)
    A = t.edge_leaf
    # every leaf has one edge per level on its path; rows of absent children are empty
    np.testing.assert_array_equal(A.sum(0), [len(p) for p in t.leaf_paths])
    assert A.reshape(t.n_gates, t.max_branching, -1)[~t.child_mask].sum() == 0
    # the root's subtree holds every leaf; a gate's subtree = union of its children's edges
    np.testing.assert_array_equal(t.gate_leaf[0], 1)
    np.testing.assert_array_equal(t.gate_leaf, A.reshape(t.n_gates, t.max_branching, -1).sum(1))


def test_nested_equals_complete():
    assert TreeSpec.from_nested([[2, 2], [2, 2]]) == TreeSpec.complete(3, 2)
    assert hash(TreeSpec.from_nested([2, 2])) == hash(TreeSpec.complete(2, 2))


@pytest.mark.parametrize("bad", [dict(depth=0), dict(depth=2, branching=(2,)), dict(depth=1, branching=1)])
def test_bad_trees(bad):
    with pytest.raises(ValueError):
        TreeSpec.complete(**bad)
    with pytest.raises(ValueError):
        TreeSpec.from_nested([()])
    with pytest.raises(TypeError):
        TreeSpec.from_nested("ab")


@pytest.mark.parametrize("tree", [TreeSpec.complete(2, 2), TreeSpec.from_nested([(), [2, 3]]),
                                  TreeSpec.complete(2, (3, 2))])
def test_children_and_parent_follow_leaf_paths(tree):
    """Walking ``children`` from the root along a leaf's path ends at that leaf; ``parent`` inverts ``children``."""
    kids, parent = tree.children, tree.parent
    for leaf, path in enumerate(tree.leaf_paths):
        node = 0
        for g, c in path:
            assert node == g
            node = kids[g, c]
        assert node == tree.n_gates + leaf
    used = kids[kids >= 0]
    assert sorted(used.tolist()) == list(range(1, tree.n_gates + tree.n_leaves))  # every node but the root once
    assert parent[0] == -1 and all(int(k) in kids[parent[k]] for k in used)
    np.testing.assert_array_equal(kids >= 0, tree.child_mask)
    text = tree.describe().splitlines()
    assert len(text) == tree.n_gates + tree.n_leaves and text[0] == "gate 0"
    assert sum(line.endswith(f"leaf {i}") for line in text for i in range(tree.n_leaves)) == tree.n_leaves
