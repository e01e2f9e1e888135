"""Test configuration in the style of equinox/numpyro: CPU platform, x64 unless disabled. The persistent
compilation cache is hme's default (hme.compile_cache), shared by the workers."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# x64 is on unless JAX_ENABLE_X64=0 (make test also runs the float32-default suite that way).
jax.config.update("jax_enable_x64", os.environ.get("JAX_ENABLE_X64", "1") not in ("0", "false", "False"))

X64 = jax.config.jax_enable_x64

#: One dtype-keyed tolerance table (relative), as in jaxopt's test_util.
TOL = {np.float32: 2e-4, np.float64: 1e-9}

DATA = os.path.join(os.path.dirname(__file__), "data")


def dtypes():
    return [np.float32, np.float64] if X64 else [np.float32]


def load_csv(name):
    import pandas as pd

    return pd.read_csv(os.path.join(DATA, name))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
