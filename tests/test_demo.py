"""The main job runs on the bundled data and its numbers make sense."""


from hme import demo


def test_demo_rows_and_tree(monkeypatch):
    rows, n_tr, n_te, tree_text = demo.run(depths=(1, 2), max_iter=100)
    assert n_tr + n_te == 8192
    err = {r[0]: r[3] for r in rows}
    # HMEs beat the linear model on this non-linear task; deeper beats shallower
    assert err["HME depth 1"] < err["LinearRegression"]
    assert err["HME depth 2"] < err["HME depth 1"]
    assert all(0 < e < 1 for e in err.values())
    assert tree_text.count("leaf") == 4 and "gate 0 (100.0% of samples)" in tree_text
