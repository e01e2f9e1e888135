"""Exported programs on disk (hme.aot): a fresh process runs the stored program instead of tracing, fits exactly the
same model, and the store stays correct when files are damaged, the key changes or the directory is full.

The store is process-wide state, so the end-to-end cases run in fresh interpreters with their own cache."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

import hme
from hme import aot, families
from hme.em import FitConfig, _fit, exportable, fit_em_weightings
from hme.families.gaussian import GaussianExpert

WORKER = r"""
import json, sys, warnings
import numpy as np
from hme import HMERegressor, aot

rng = np.random.default_rng(0)
X = rng.normal(size=(300, 2))
y = np.where(X[:, 0] > 0, 1.0 + 2.0 * X[:, 1], -1.0 - X[:, 1]) + 0.2 * rng.normal(size=300)
preds = []
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for branching in range(2, 2 + int(sys.argv[1])):
        model = HMERegressor(depth=1, branching=branching, max_iter=8, random_state=0).fit(X, y)
        preds.append(model.predict(X).tolist())
print(json.dumps({"counts": aot.counts, "preds": preds}))
"""


def _run(tmp_path, models=1, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HME_COMPILATION", "JAX_COMPILATION"))}
    full.update(XDG_CACHE_HOME=str(tmp_path / "xdg"))
    full.update({k: v for k, v in env.items() if v is not None})
    proc = subprocess.run([sys.executable, "-c", WORKER, str(models)], env=full, text=True, capture_output=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _store(tmp_path):
    path = tmp_path / "xdg" / "hme" / "jax" / aot.SUBDIRECTORY
    return sorted(path.glob("*" + aot.SUFFIX)) if path.exists() else []


def test_a_fresh_process_runs_the_stored_program_and_fits_the_same_model(tmp_path):
    first = _run(tmp_path)
    assert first["counts"]["exported"] >= 1 and first["counts"]["loaded"] == 0
    stored = _store(tmp_path)
    assert len(stored) == first["counts"]["exported"]
    second = _run(tmp_path)
    assert second["counts"]["exported"] == 0
    assert second["counts"]["loaded"] == first["counts"]["exported"]
    assert second["preds"] == first["preds"]  # bit for bit
    # the plain jit (store off) fits the same model, up to the rounding of a separately compiled program
    off = _run(tmp_path, HME_COMPILATION_CACHE="0")
    assert off["counts"]["exported"] == off["counts"]["loaded"] == 0 and off["counts"]["jit"] >= 1
    np.testing.assert_allclose(off["preds"], first["preds"], rtol=1e-9, atol=1e-9)


def test_a_damaged_file_is_dropped_and_the_program_exported_again(tmp_path):
    first = _run(tmp_path)
    for path in _store(tmp_path):
        path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk
    again = _run(tmp_path)
    assert again["counts"]["loaded"] == 0 and again["counts"]["exported"] == first["counts"]["exported"]
    assert again["preds"] == first["preds"]
    assert _run(tmp_path)["counts"]["loaded"] == first["counts"]["exported"]  # the re-exported files are good


def test_the_store_stays_within_its_share_of_the_cap(tmp_path):
    cap_mb = 2.0
    out = _run(tmp_path, models=4, HME_COMPILATION_CACHE_MAX_MB=str(cap_mb))
    assert out["counts"]["exported"] >= 4
    sizes = [p.stat().st_size for p in _store(tmp_path)]
    assert sum(sizes) <= aot.MAX_FRACTION * cap_mb * 2**20
    assert len(sizes) < out["counts"]["exported"]  # something was evicted


def test_the_key_separates_what_changes_the_program():
    spec = hme.make_spec(2, depth=1)
    cfg = FitConfig()
    leaves, tree = jax.tree_util.tree_flatten({"X": np.zeros((16, 2))})
    avals = tuple((np.shape(x), str(np.asarray(x).dtype), False) for x in leaves)
    key = aot._disk_key("f", (("spec", spec), ("cfg", cfg)), tree, avals)
    assert key == aot._disk_key("f", (("spec", spec), ("cfg", cfg)), tree, avals)  # deterministic
    others = [
        aot._disk_key("g", (("spec", spec), ("cfg", cfg)), tree, avals),
        aot._disk_key("f", (("spec", hme.make_spec(2, depth=2)), ("cfg", cfg)), tree, avals),
        aot._disk_key("f", (("spec", spec), ("cfg", FitConfig(max_iter=7))), tree, avals),
        aot._disk_key("f", (("spec", spec), ("cfg", cfg)), tree, (((32, 2), "float64", False),)),
        aot._disk_key("f", (("spec", spec), ("cfg", cfg)), tree, (((16, 2), "float32", False),)),
    ]
    assert len({key, *others}) == 6
    # an argument whose repr shows an address would give every process its own key: never stored
    assert aot._disk_key("f", (("x", object()),), tree, avals) is None


def test_monitored_fits_and_fits_inside_a_trace_run_the_plain_jit(rng):
    spec = hme.make_spec(2, depth=1)
    X = rng.normal(size=(64, 2))
    y = X[:, 0] + 0.1 * rng.normal(size=64)
    before = dict(aot.counts)
    hme.fit_em(spec, X, y, max_iter=3, verbose=1)  # reports every iteration through a host callback
    assert aot.counts["jit"] == before["jit"] + 1
    res = fit_em_weightings(spec, X, y, np.ones((2, 64)), max_iter=3)  # _fit under vmap, inside a trace
    assert np.all(np.isfinite(np.asarray(res.objective)))
    assert aot.counts["exported"] + aot.counts["loaded"] <= before["exported"] + before["loaded"] + 1
    assert _fit._cache_size() >= 1


def test_small_programs_compile_with_the_legacy_emitters_and_fit_the_same_model(rng, monkeypatch):
    assert aot.compiler_options_for(1024, 4) == {"xla_cpu_use_fusion_emitters": False}
    assert aot.compiler_options_for(1 << 20, 16) == {}
    spec = hme.make_spec(2, depth=1, branching=3)
    X = rng.normal(size=(200, 2))
    y = np.where(X[:, 0] > 0, 1.0 + 2.0 * X[:, 1], -1.0 - X[:, 1]) + 0.2 * rng.normal(size=200)
    legacy = hme.fit_em(spec, X, y, max_iter=30, tol=0.0)
    monkeypatch.setattr(aot, "FAST_COMPILE_MAX_ROW_LEAVES", 0)  # XLA's default emitters for every size
    default = hme.fit_em(spec, X, y, max_iter=30, tol=0.0)
    np.testing.assert_allclose(float(legacy.objective), float(default.objective), rtol=1e-9)
    for u, v in zip(jax.tree_util.tree_leaves(legacy.params), jax.tree_util.tree_leaves(default.params), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6, atol=1e-8)


class _UsersGaussian(GaussianExpert):
    name = "users_gaussian_for_test_aot"


def test_only_hmes_own_families_and_unmonitored_fits_are_stored():
    assert exportable(hme.make_spec(2, depth=2, gate="laplace"), FitConfig())
    assert not exportable(hme.make_spec(2, depth=1), FitConfig(monitor=True))
    families.register_expert(_UsersGaussian())
    try:  # the user's code can change while hme's source files, which key the store, do not
        assert not exportable(hme.make_spec(2, depth=1, expert=_UsersGaussian.name), FitConfig())
    finally:
        families.unregister_expert(_UsersGaussian.name)
