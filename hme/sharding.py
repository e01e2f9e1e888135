r"""Data parallelism: rows sharded over a 1-D device mesh, parameters replicated.

EM's sufficient statistics, the gradient's loss and every prediction are sums or maps over rows, so with the rows
of ``X``, ``y`` and the weights placed on a mesh axis (``NamedSharding(mesh, P("rows"))``) the compiler partitions
the same compiled programs (GSPMD): each device computes its rows' part and the sums become all-reduces. The result
equals the one-device fit up to the order of floating-point additions.

* :func:`make_mesh` -- a 1-D mesh from ``devices`` (an int, ``"all"``, a list of devices or a ``Mesh``);
* :func:`data_parallel` -- a context in which the core's fits and predictions place their rows on that mesh;
* :func:`place_rows` -- what the core calls on its (padded) row arrays.

On a CPU the devices are host "devices" (``XLA_FLAGS=--xla_force_host_platform_device_count=N``, set before JAX
starts): useful to test, not faster than one device on the same cores.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

#: the mesh axis the rows are split over
ROWS = "rows"

_MESH: contextvars.ContextVar = contextvars.ContextVar("hme_row_mesh", default=None)


def make_mesh(devices) -> Mesh | None:
    """A 1-D mesh over ``devices``: None or 1 -> None (one device, no sharding); an int k -> the first k devices;
    ``"all"`` -> every device of the default backend; a sequence of devices; or a ``Mesh`` (returned as is, its
    first axis holding the rows)."""
    if devices is None or isinstance(devices, Mesh):
        return devices
    available = jax.devices()
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f'devices must be an int >= 1, "all", a list of devices or a Mesh, got {devices!r}')
        chosen = available
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices={devices} but {len(available)} device(s) are available "
                             f"({available[0].platform}); on a CPU set XLA_FLAGS="
                             f"--xla_force_host_platform_device_count=N before JAX starts")
        chosen = available[: int(devices)]
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("devices is an empty list")
    if len(chosen) == 1:
        return None
    return Mesh(np.asarray(chosen), (ROWS,))


@contextlib.contextmanager
def data_parallel(mesh: Mesh | None) -> Iterator[None]:
    """Within the context the core's fits (:func:`hme.fit_em`, :func:`hme.fit_gradient`) and predictions place
    their rows on ``mesh`` (None: no sharding)."""
    token = _MESH.set(mesh)
    try:
        yield
    finally:
        _MESH.reset(token)


def accepts_mesh(fit):
    """Give a core fitting function a ``mesh`` keyword (anything :func:`make_mesh` takes): the fit then runs in
    :func:`data_parallel` over it."""

    @functools.wraps(fit)
    def wrapper(*args, mesh=None, **kwargs):
        if mesh is None:
            return fit(*args, **kwargs)
        with data_parallel(make_mesh(mesh)):
            return fit(*args, **kwargs)

    sig = inspect.signature(fit)
    extra = inspect.Parameter("mesh", inspect.Parameter.KEYWORD_ONLY, default=None)
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), extra])
    return wrapper


def n_shards() -> int:
    mesh = _MESH.get()
    return 1 if mesh is None else int(mesh.devices.size)


def padded_rows(n: int, base: int) -> int:
    """``base`` (the bucketed row count of ``n`` rows) rounded up to a multiple of the mesh's device count."""
    k = n_shards()
    return base if k == 1 else -(-base // k) * k


def place_rows(*arrays):
    """The arrays (rows first, already padded to :func:`padded_rows`) placed on the current mesh, rows split over
    its first axis; unchanged without a mesh."""
    mesh = _MESH.get()
    if mesh is None:
        return arrays
    axis = mesh.axis_names[0]
    out = []
    for a in arrays:
        spec = PartitionSpec(axis, *([None] * (a.ndim - 1)))
        out.append(jax.device_put(a, NamedSharding(mesh, spec)))
    return tuple(out)


__all__ = ["ROWS", "accepts_mesh", "data_parallel", "make_mesh", "n_shards", "padded_rows", "place_rows"]
