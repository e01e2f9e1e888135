r"""Data that is read in fixed-size chunks: NumPy arrays and ``np.memmap``, zarr and dask arrays, Parquet datasets.

A :class:`ChunkSource` yields ``(X, y, w)`` NumPy chunks of at most ``chunk_size`` rows, in row order, in the fit's
dtype. Only one chunk (and the one read ahead of it, :func:`prefetch`) is in memory at a time, whatever the number
of rows: a streamed fit's memory is bounded by the chunk size.

* array-likes with ``shape`` and slicing (``np.ndarray``, ``np.memmap``, ``zarr.Array``, ``dask.array.Array``):
  ``X`` (n, p) and ``y`` (n,) or (n, k), each read slice by slice (dask slices are computed);
* :class:`Parquet`: a file or a directory of files, read through ``pyarrow.dataset`` in record batches, with
  the columns named for X, y and (optionally) the sample weight.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

#: rows per chunk when none is given: 65,536 rows of 20 float32 features are 5 MiB
DEFAULT_CHUNK_SIZE = 65536

Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Parquet:
    """A Parquet file or dataset directory (``path``), with the column names of the inputs ``X``, the target(s)
    ``y`` and optionally the sample ``weight``."""

    path: str
    X: Sequence[str]
    y: str | Sequence[str]
    weight: str | None = None

    def __post_init__(self):
        if isinstance(self.X, str) or not len(self.X):
            raise ValueError("Parquet: X must be a non-empty list of column names")
        object.__setattr__(self, "X", tuple(self.X))

    @property
    def y_columns(self) -> tuple[str, ...]:
        return (self.y,) if isinstance(self.y, str) else tuple(self.y)


def is_out_of_core(X) -> bool:
    """Whether ``X`` is data a fit should stream (a memmap, a zarr or dask array, or :class:`Parquet`) rather than
    hold in memory."""
    if isinstance(X, (np.memmap, Parquet)):
        return True
    module = type(X).__module__ or ""
    return module.startswith(("zarr", "dask"))


class ChunkSource:
    """Rows read in chunks; ``n_rows``, ``n_features`` and ``n_targets`` known up front."""

    n_rows: int
    n_features: int
    n_targets: int
    y_1d: bool

    def chunks(self, chunk_size: int, dtype) -> Iterator[Chunk]:
        """``(X (c, p), y (c, k), w (c,))`` for consecutive rows, c ≤ ``chunk_size``, in ``dtype``."""
        raise NotImplementedError


def _read(a, start: int, stop: int) -> np.ndarray:
    part = a[start:stop]
    if hasattr(part, "compute"):  # dask
        part = part.compute()
    return np.asarray(part)


class ArraySource(ChunkSource):
    """``X`` (n, p), ``y`` (n,) or (n, k) and optional weights (n,), any array-likes that slice by rows."""

    def __init__(self, X, y, sample_weight=None):
        for name, a in (("X", X), ("y", y)):
            if not hasattr(a, "shape") or not hasattr(a, "__getitem__"):
                raise TypeError(f"{name} must be an array-like with a shape (numpy, memmap, zarr, dask), got "
                                f"{type(a).__name__}")
        if len(X.shape) != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {tuple(X.shape)}")
        if len(y.shape) not in (1, 2) or y.shape[0] != X.shape[0]:
            raise ValueError(f"y must have shape ({X.shape[0]},) or ({X.shape[0]}, n_outputs), got {tuple(y.shape)}")
        if sample_weight is not None and tuple(np.shape(sample_weight)) != (X.shape[0],):
            raise ValueError(f"sample_weight must have shape ({X.shape[0]},), got {tuple(np.shape(sample_weight))}")
        self.X, self.y, self.w = X, y, sample_weight
        self.n_rows, self.n_features = int(X.shape[0]), int(X.shape[1])
        self.y_1d = len(y.shape) == 1
        self.n_targets = 1 if self.y_1d else int(y.shape[1])

    def chunks(self, chunk_size, dtype):
        for start in range(0, self.n_rows, chunk_size):
            stop = min(start + chunk_size, self.n_rows)
            X = _read(self.X, start, stop).astype(dtype, copy=False)
            y = _read(self.y, start, stop).astype(dtype, copy=False).reshape(stop - start, -1)
            w = (np.ones(stop - start, dtype) if self.w is None
                 else _read(self.w, start, stop).astype(dtype, copy=False))
            yield X, y, w


class ParquetSource(ChunkSource):
    """The rows of a :class:`Parquet` dataset, re-cut from its record batches into chunks of fixed size."""

    def __init__(self, spec: Parquet):
        try:
            import pyarrow.dataset as ds
        except ImportError as e:  # pragma: no cover - pyarrow is in the [scale] extra
            raise ImportError("reading Parquet needs pyarrow: pip install 'hme[scale]'") from e
        self.spec = spec
        self.dataset = ds.dataset(spec.path, format="parquet")
        names = set(self.dataset.schema.names)
        wanted = list(spec.X) + list(spec.y_columns) + ([spec.weight] if spec.weight else [])
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ValueError(f"Parquet dataset {spec.path!r} has no columns {missing}; it has {sorted(names)}")
        self.columns = wanted
        self.n_rows = int(self.dataset.count_rows())
        self.n_features = len(spec.X)
        self.n_targets = len(spec.y_columns)
        self.y_1d = isinstance(spec.y, str)

    def chunks(self, chunk_size, dtype):
        p, k = self.n_features, self.n_targets
        pending: list[np.ndarray] = []
        have = 0
        for batch in self.dataset.to_batches(columns=self.columns, batch_size=chunk_size):
            if batch.num_rows == 0:
                continue
            block = np.column_stack([batch.column(i).to_numpy(zero_copy_only=False) for i in range(len(self.columns))])
            pending.append(block.astype(dtype, copy=False))
            have += block.shape[0]
            while have >= chunk_size:
                rows = np.concatenate(pending) if len(pending) > 1 else pending[0]
                yield self._split(rows[:chunk_size], p, k, dtype)
                rest = rows[chunk_size:]
                pending, have = ([rest] if len(rest) else []), len(rest)
        if have:
            yield self._split(np.concatenate(pending), p, k, dtype)

    def _split(self, rows, p, k, dtype):
        w = rows[:, p + k] if self.spec.weight else np.ones(rows.shape[0], dtype)
        return np.ascontiguousarray(rows[:, :p]), np.ascontiguousarray(rows[:, p:p + k]), np.ascontiguousarray(w)


def as_source(X, y=None, sample_weight=None) -> ChunkSource:
    """A :class:`ChunkSource` for ``X`` (and ``y``, ``sample_weight``); ``X`` may be a :class:`Parquet`, then
    ``y`` and ``sample_weight`` are its columns and must not be given."""
    if isinstance(X, ChunkSource):
        return X
    if isinstance(X, Parquet):
        if y is not None or sample_weight is not None:
            raise ValueError("with a Parquet dataset, y and sample_weight are its columns: pass y=None")
        return ParquetSource(X)
    if y is None:
        raise ValueError("y is required (or pass a Parquet dataset that names its y column)")
    return ArraySource(X, y, sample_weight)


def prefetch(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """The same chunks, each next one read on a background thread while the caller computes on the current one
    (reading from disk and the compiled step overlap; at most two chunks are in memory)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(next, chunks, None)
        while True:
            item = nxt.result()
            if item is None:
                return
            nxt = pool.submit(next, chunks, None)
            yield item
