"""Loaders for the data bundled with the package (sources and licences in ``hme/data/README.md``)."""

from __future__ import annotations

from importlib import resources

import numpy as np


def _read(name: str) -> np.ndarray:
    with resources.files("hme.data").joinpath(name).open("rb") as f:
        return np.loadtxt(f, delimiter=",", skiprows=1, dtype=np.float64)


def load_kin8nm(dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """kin8nm (DELVE): X of shape (8192, 8) joint angles, y of shape (8192,) end-effector distance."""
    data = _read("kin8nm.csv")
    return data[:, :8].astype(dtype), data[:, 8].astype(dtype)


def load_tonedata(dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """tonedata (Cohen 1980): X of shape (150, 1) stretch ratio, y of shape (150,) perceived tone ratio."""
    data = _read("tonedata.csv")
    return data[:, :1].astype(dtype), data[:, 1].astype(dtype)


def load_mcycle(dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """mcycle (Silverman 1985): X of shape (133, 1) ms after impact, y of shape (133,) head acceleration in g."""
    data = _read("mcycle.csv")
    return data[:, :1].astype(dtype), data[:, 1].astype(dtype)
