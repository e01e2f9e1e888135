"""The memory-mapping guard: XLA:CPU's JIT uses three mappings per compiled kernel, and a process that reaches
``vm.max_map_count`` crashes inside LLVM on its next compile. hme clears JAX's caches before that, or raises a
clear MemoryError when the mappings are held by something else."""

import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import hme
from hme import code_space

linux_only = pytest.mark.skipif(code_space.map_count() is None or code_space.map_limit() is None,
                                reason="needs /proc/self/maps and vm.max_map_count")


def _data(n=200):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 1))
    return X, X[:, 0] + 0.1 * rng.normal(size=n)


@linux_only
def test_each_compiled_fit_costs_mappings_and_clearing_the_caches_returns_them():
    X, y = _data()
    spec = hme.make_spec(1, depth=2, gate="laplace")
    hme.fit_em(spec, X, y, max_iter=2)
    before = code_space.map_count()
    hme.fit_em(spec, X, y, max_iter=3)  # max_iter is static: a new program
    grown = code_space.map_count() - before
    assert grown > 100, grown  # hundreds of kernels, three mappings each
    jax.clear_caches()
    assert code_space.map_count() < before + grown // 2


@linux_only
def test_guard_clears_the_caches_when_the_headroom_is_gone_and_the_next_fit_works(caplog):
    X, y = _data()
    spec = hme.make_spec(1, depth=1)
    hme.fit_em(spec, X, y, max_iter=5)
    predict = hme.predict_mean.__wrapped__  # the jitted function under the row-bucketing wrapper
    hme.predict_mean(spec, hme.fit_em(spec, X, y, max_iter=5).params, X)
    assert predict._cache_size() > 0
    count = code_space.map_count()
    with caplog.at_level(logging.WARNING, logger="hme"):
        code_space.ensure_code_space(headroom=code_space.map_limit())  # "no headroom left"
    assert predict._cache_size() == 0
    assert code_space.map_count() < count
    assert any("vm.max_map_count" in r.getMessage() for r in caplog.records)
    assert np.isfinite(float(hme.fit_em(spec, X, y, max_iter=5).objective))  # recompiles and fits


@linux_only
def test_guard_is_free_when_nothing_was_compiled(monkeypatch):
    X, y = _data()
    spec = hme.make_spec(1, depth=1)
    hme.fit_em(spec, X, y, max_iter=5)
    code_space.ensure_code_space()
    calls = []
    monkeypatch.setattr(code_space, "map_count", lambda: calls.append(1) or 0)
    hme.fit_em(spec, X, y, max_iter=5)  # cached program: nothing compiled, nothing counted
    assert calls == []


_FILL = r"""
import mmap, resource, sys
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the control aborts: no core file of ~1 GB in the work tree
import numpy as np, jax
jax.config.update("jax_enable_x64", True)
import hme, hme.code_space as cs
rng = np.random.default_rng(0)
X = rng.normal(size=(200, 1)); y = X[:, 0] + 0.1 * rng.normal(size=200)
hme.fit_em(hme.make_spec(1, depth=1), X, y, max_iter=3)
held = []
free = int(sys.argv[2]) if len(sys.argv) > 2 else 200
for _ in range(3):  # hold mappings (shared anonymous pages never merge) until `free` are left
    held.extend(mmap.mmap(-1, 4096) for _ in range(max(cs.map_limit() - cs.map_count() - free, 0)))
if sys.argv[1] == "unguarded":
    cs.ensure_code_space = lambda *a, **k: None
print("FILLED", cs.map_limit() - cs.map_count(), flush=True)
try:
    hme.fit_em(hme.make_spec(1, depth=2), X, y, max_iter=4)
    print("RETURNED")
except MemoryError as e:
    print("MEMORYERROR", e)
"""


@linux_only
@pytest.mark.parametrize("mode,cache", [("guarded", False), ("guarded", True), ("unguarded", False)])
def test_a_process_out_of_mappings_gets_a_clear_error_not_a_crash(mode, cache, tmp_path):
    # With the persistent cache on, a compiled program is also serialised (more mappings) before it runs.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HME_COMPILATION", "JAX_COMPILATION"))}
    env.update(HME_COMPILATION_CACHE=str(tmp_path / "cache") if cache else "0",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    # No preexec_fn: it runs os.fork's at-fork hooks in this multithreaded JAX process (a RuntimeWarning, an error
    # here).
    out = subprocess.run([sys.executable, "-c", _FILL, mode], capture_output=True, text=True, timeout=600, env=env)
    assert "FILLED" in out.stdout, out.stdout + out.stderr[-2000:]
    if mode == "guarded":
        assert out.returncode == 0, out.stderr[-2000:]
        assert "MEMORYERROR" in out.stdout and "vm.max_map_count" in out.stdout
    else:  # the control: without the guard, LLVM fails to map the code and the interpreter dies
        assert out.returncode != 0 and "RETURNED" not in out.stdout
        assert "Cannot allocate memory" in out.stderr


@linux_only
def test_the_reserve_covers_a_compile_and_its_write_to_the_persistent_cache(tmp_path):
    # Unguarded, with exactly RESERVE mappings free: a depth-2 EM program compiles, is serialised into the cache
    # and runs (with 2,600 free it crashed in JAX's put_executable_and_time).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HME_COMPILATION", "JAX_COMPILATION"))}
    env.update(HME_COMPILATION_CACHE=str(tmp_path / "cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    out = subprocess.run([sys.executable, "-c", _FILL, "unguarded", str(code_space.RESERVE)], capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0 and "RETURNED" in out.stdout, out.stdout + out.stderr[-2000:]
    assert any((tmp_path / "cache").glob("*-cache"))
