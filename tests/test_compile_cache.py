"""The persistent compilation cache hme turns on (hme.compile_cache): where it lives, that a fresh process loads
what an earlier one stored and fits exactly the same model, that the user's own choice wins, and that processes
sharing one directory (two test workers, parallel grid searches) neither crash nor disagree.

The cache is process-wide, so every case runs in fresh interpreters with their own environment."""

import json
import os
import subprocess
import sys

import pytest

WORKER = r"""
import json, sys, warnings
import jax
import numpy as np

hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event)
                                       if event == "/jax/compilation_cache/cache_hits" else None)
from hme import HMERegressor, compile_cache

rng = np.random.default_rng(0)
X = rng.normal(size=(300, 2))
y = np.where(X[:, 0] > 0, 1.0 + 2.0 * X[:, 1], -1.0 - X[:, 1]) + 0.2 * rng.normal(size=300)
coefs = []
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for branching in range(2, 2 + int(sys.argv[1])):
        model = HMERegressor(depth=1, branching=branching, max_iter=8, random_state=0).fit(X, y)
        coefs.append(model.predict(X).tolist())
print(json.dumps({"directory": compile_cache.directory(), "hits": len(hits), "coefs": coefs,
                  "max_size": jax.config.jax_compilation_cache_max_size}))
"""


def _run(tmp_path, models=1, **env):
    """Start the worker in a fresh interpreter with ``env`` added (None removes a variable); the Popen."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HME_COMPILATION", "JAX_COMPILATION"))}
    full.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    full.update({k: v for k, v in env.items() if v is not None})
    return subprocess.Popen([sys.executable, "-c", WORKER, str(models)], env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _entries(path):
    return sorted(p.name for p in path.glob("*-cache")) if path.exists() else []


def test_a_fresh_process_loads_what_an_earlier_one_stored_and_fits_the_same_model(tmp_path):
    default = tmp_path / "xdg" / "hme" / "jax"
    first = _result(_run(tmp_path))
    assert first["directory"] == str(default)
    assert first["hits"] == 0
    assert first["max_size"] == 1024 * 2**20  # capped, hence locked
    stored = _entries(default)
    assert stored, "nothing was written to the cache"
    assert (default / ".lockfile").exists()
    second = _result(_run(tmp_path))
    assert second["hits"] >= len(stored) // 2, (second["hits"], len(stored))
    assert second["coefs"] == first["coefs"]  # bit for bit: the loaded programs are the compiled ones


def test_the_off_switch_a_users_own_directory_and_an_unwritable_one_are_respected(tmp_path):
    default = tmp_path / "xdg" / "hme" / "jax"
    user = tmp_path / "mine"
    off = _run(tmp_path, HME_COMPILATION_CACHE="off")
    own = _run(tmp_path, JAX_COMPILATION_CACHE_DIR=str(user))
    unwritable = _run(tmp_path, HME_COMPILATION_CACHE="/proc/hme-cannot-write-here")
    off, own, unwritable = _result(off), _result(own), _result(unwritable)
    assert off["directory"] is None and unwritable["directory"] is None
    assert own["directory"] == str(user)
    assert own["max_size"] == -1  # the user's settings are left exactly as they are
    assert _entries(user)
    assert not default.exists()
    assert off["coefs"] == own["coefs"] == unwritable["coefs"]


def test_processes_sharing_an_empty_cache_both_fit_and_agree(tmp_path):
    shared = tmp_path / "shared"
    procs = [_run(tmp_path, models=3, HME_COMPILATION_CACHE=str(shared)) for _ in range(2)]
    a, b = (_result(p) for p in procs)
    assert a["directory"] == b["directory"] == str(shared)
    assert a["coefs"] == b["coefs"]
    later = _result(_run(tmp_path, models=3, HME_COMPILATION_CACHE=str(shared)))
    assert later["hits"] > 0
    assert later["coefs"] == a["coefs"]


@pytest.mark.parametrize("value", ["-5", "lots"])
def test_a_bad_size_cap_is_a_clear_error(tmp_path, value):
    out, err = _run(tmp_path, HME_COMPILATION_CACHE_MAX_MB=value).communicate(timeout=600)
    assert "ValueError: HME_COMPILATION_CACHE_MAX_MB must be" in err, err[-2000:]
