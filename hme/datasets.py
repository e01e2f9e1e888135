"""Loaders for the data bundled with the package."""

from __future__ import annotations

from importlib import resources

import numpy as np


def load_kin8nm(dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """kin8nm (DELVE): X of shape (8192, 8) joint angles, y of shape (8192,) end-effector distance."""
    with resources.files("hme.data").joinpath("kin8nm.csv").open("rb") as f:
        data = np.loadtxt(f, delimiter=",", skiprows=1, dtype=np.float64)
    return data[:, :8].astype(dtype), data[:, 8].astype(dtype)
