"""The command line (issue 12): ``hme fit data.csv --target y`` fits, prints and saves; ``hme --help`` does not
load JAX."""

import subprocess
import sys

import numpy as np
import pytest

import hme
from hme.cli import main


def test_import_hme_and_the_cli_do_not_load_jax():
    code = "import sys, hme, hme.cli; print(sorted(m for m in ('jax', 'sklearn', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_fit_a_csv_prints_the_table_and_saves_a_model_that_predicts_the_same(tmp_path, capsys, rng):
    X = rng.normal(size=(200, 2))
    y = np.where(X[:, 0] > 0, 1 + 2 * X[:, 1], -1 - X[:, 1]) + 0.1 * rng.normal(size=200)
    path = tmp_path / "d.csv"
    rows = ["a,b,y"] + [f"{a:.6f},{b:.6f},{c:.6f}" for a, b, c in zip(X[:, 0], X[:, 1], y, strict=True)]
    rows.insert(5, "NA,0.5,1.0")  # a missing value: the row is dropped and counted
    path.write_text("\n".join(rows) + "\n")
    assert main(["fit", str(path), "--target", "y", "--depth", "1", "--n-init", "1"]) == 0
    out = capsys.readouterr().out
    assert "dropped 1 rows with missing values" in out
    assert "leaf 1: b" in out and "std_err" in out and "saved the model to" in out
    import pandas as pd

    model = hme.load(tmp_path / "d.hme.npz")
    assert list(model.feature_names_in_) == ["a", "b"]
    frame = pd.DataFrame(X, columns=["a", "b"])
    direct = hme.HMERegressor(depth=1, n_init=1, random_state=0).fit(frame, y)
    np.testing.assert_allclose(model.predict(frame), direct.predict(frame), rtol=1e-5, atol=1e-6)


def test_fit_reports_unknown_columns_clearly(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,y\n1,2\n2,3\n")
    with pytest.raises(SystemExit, match="no column 'z'"):
        main(["fit", str(path), "--target", "z"])
