r"""Several processes, each holding its own rows, fitting one model: the reductions go through JAX's distributed
runtime (``jax.distributed``; CPU collectives through gloo, on GPUs NCCL).

A streamed fit (:func:`hme.fit_em_streaming`, ``HMERegressor(chunk_size=...)``) in a process group treats each
process's data as its share of the rows: the first pass merges every process's means and co-moments, the start's
subsample is drawn from all rows (each process contributes the drawn rows it holds), and every pass all-reduces
the moments before the same M-step runs in every process. The fit equals a one-process fit of all rows up to the
order of floating-point additions (``benchmarks/multihost.py``).

Start every process with :func:`initialize` before anything else touches JAX:

* one machine, N processes: ``initialize("127.0.0.1:12355", N, i)`` in process i;
* SLURM: ``initialize()`` with no arguments reads the job's environment (``srun`` one task per process);
* Kubernetes or a list of hosts: the coordinator's ``host:port`` (process 0's address), the number of processes
  and each one's rank, e.g. from an indexed Job's ``JOB_COMPLETION_INDEX``.
"""

from __future__ import annotations

import jax
import numpy as np


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, **kwargs) -> None:
    """``jax.distributed.initialize`` with CPU collectives through gloo (arguments as there; none on SLURM)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)


def n_processes() -> int:
    return jax.process_count()


def _gather(tree):
    """Every process's ``tree`` (NumPy arrays of equal shapes everywhere), stacked on a new axis 0, in float64."""
    from jax.experimental import multihost_utils

    with jax.enable_x64(True):
        return multihost_utils.process_allgather(jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree))


def allsum(tree):
    """The sum of ``tree`` (a pytree of arrays) over the processes, in float64; ``tree`` itself in one process."""
    if n_processes() == 1:
        return tree
    return jax.tree_util.tree_map(lambda a: np.asarray(a).sum(0), _gather(tree))


def allgather(tree):
    """Every process's ``tree`` stacked on axis 0 (one process: a stack of one)."""
    if n_processes() == 1:
        return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64)[None], tree)
    return jax.tree_util.tree_map(np.asarray, _gather(tree))


def concat_rows(arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Arrays of rows (equal trailing shapes everywhere, any number of rows per process) concatenated in process
    order, the same in every process; ``arrays`` themselves in one process."""
    if n_processes() == 1:
        return arrays
    counts = allgather(np.asarray(len(arrays[0])))[:].astype(int)
    top = int(counts.max())
    padded = tuple(np.pad(np.asarray(a, np.float64), ((0, top - len(a)),) + ((0, 0),) * (np.ndim(a) - 1))
                   for a in arrays)
    stacked = allgather(padded)
    return tuple(np.concatenate([s[i, :c] for i, c in enumerate(counts)]).astype(a.dtype)
                 for s, a in zip(stacked, arrays, strict=True))


def same_everywhere(tree):
    """Process 0's ``tree`` in every process (guards against any divergence of replicated computations)."""
    if n_processes() == 1:
        return tree
    from jax.experimental import multihost_utils

    return multihost_utils.broadcast_one_to_all(tree)
