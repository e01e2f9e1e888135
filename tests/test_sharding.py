"""Data parallelism (issue 17): rows sharded over two forced host devices give one device's answer, for EM, the
gradient solver, prediction and the estimators. JAX fixes its device count when it starts, so the two-device runs
happen in a fresh Python process (``XLA_FLAGS=--xla_force_host_platform_device_count=2``)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import hme
from hme import sharding

SCRIPT = textwrap.dedent(
    """
    import json, os
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import hme
    from hme import sharding

    assert len(jax.devices()) == 2, jax.devices()
    rng = np.random.default_rng(0)
    n = 3001  # odd: the padding must also make the rows divisible by the devices
    X = rng.normal(size=(n, 3))
    # a soft gate (slope 2): a finite optimum that L-BFGS reaches (a hard split sends the gate slope to infinity,
    # along which any two runs drift apart)
    z = rng.uniform(size=n) < 1 / (1 + np.exp(-2 * X[:, 0]))
    y = np.where(z, 1 + X[:, 1], -1 - X[:, 2]) + 0.3 * rng.normal(size=n)
    spec = hme.make_spec(3, depth=2)
    out = {}
    for name, fit, kw in [("em", hme.fit_em, dict(max_iter=300)),
                          # 40 L-BFGS steps, no stopping rule: the runs start a rounding error apart (1e-16) and
                          # L-BFGS on this non-convex objective amplifies it about tenfold per 5 steps (1e-13 after
                          # 40 steps, 1e-7 after 100); the stopping rule would then stop them at different points
                          ("gradient", hme.fit_gradient, dict(max_iter=40, tol=0.0))]:
        one = fit(spec, X, y, random_state=0, **kw)
        two = fit(spec, X, y, random_state=0, mesh=2, **kw)
        out[name] = abs(float(one.objective) - float(two.objective)) / abs(float(one.objective))
        out[name + "_iterations"] = [int(one.n_iter), int(two.n_iter)]
        p1 = np.asarray(hme.predict_mean(spec, one.params, X))
        with sharding.data_parallel(sharding.make_mesh(2)):
            p2 = np.asarray(hme.predict_mean(spec, one.params, X))
            ll2 = np.asarray(hme.log_likelihood(spec, one.params, X, y))
        out[name + "_predict"] = float(np.max(np.abs(p1 - p2)))
        out[name + "_loglik"] = float(np.max(np.abs(np.asarray(hme.log_likelihood(spec, one.params, X, y)) - ll2)))
    r1 = hme.HMERegressor(depth=2, random_state=0).fit(X, y)
    r2 = hme.HMERegressor(depth=2, random_state=0, devices=2).fit(X, y)
    out["regressor"] = abs(r1.log_likelihood_ - r2.log_likelihood_) / abs(r1.log_likelihood_)
    out["regressor_predict"] = float(np.max(np.abs(r1.predict(X) - r2.predict(X))))
    c = (y > 0).astype(int)
    c1 = hme.HMEClassifier(depth=1, random_state=0).fit(X, c)
    c2 = hme.HMEClassifier(depth=1, random_state=0, devices="all").fit(X, c)
    out["classifier"] = abs(c1.log_likelihood_ - c2.log_likelihood_) / abs(c1.log_likelihood_)
    out["classifier_proba"] = float(np.max(np.abs(c1.predict_proba(X) - c2.predict_proba(X))))
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def two_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR="")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("what", ["em", "gradient", "regressor", "classifier"])
def test_two_devices_give_one_devices_log_likelihood(two_devices, what):
    """Relative difference of the fitted log-likelihood below 1e-5 (the issue's target); EM from the same
    default start agrees to rounding."""
    assert two_devices[what] < (1e-10 if what in ("em", "regressor", "gradient") else 1e-5), two_devices
    if what in ("em", "gradient"):
        a, b = two_devices[what + "_iterations"]
        assert a == b, two_devices


@pytest.mark.parametrize("what", ["em_predict", "em_loglik", "gradient_predict", "regressor_predict",
                                  "classifier_proba"])
def test_two_devices_predict_like_one(two_devices, what):
    assert two_devices[what] < 1e-8, two_devices


def test_mesh_arguments_are_checked():
    assert sharding.make_mesh(1) is None and sharding.make_mesh(None) is None
    with pytest.raises(ValueError, match="device"):
        sharding.make_mesh(len(__import__("jax").devices()) + 1)
    with pytest.raises(ValueError, match="devices must be"):
        sharding.make_mesh("some")
    with pytest.raises(ValueError):
        hme.HMERegressor(devices=0).fit(np.zeros((20, 1)), np.zeros(20))
