r"""Live progress and clean interruption of compiled fits.

A compiled EM loop runs inside XLA: Python cannot print from it or stop it. With ``FitConfig(monitor=True)`` the
loop calls back to the host once per iteration (:func:`report`, a ``jax.pure_callback`` with the iteration and
objective of every restart) and stops when the callback answers ``True``. On the CPU a program with host
callbacks runs synchronously inside the call that launches it, where the main thread cannot handle a signal;
so :func:`run_monitored` launches it from a helper thread and the main thread waits in an interruptible
``join``, so that:

* **progress**: :class:`FitMonitor` shows the iteration, the best objective and the restarts still running
  (a tqdm bar when ``verbose`` is set or once the fit has run for :data:`QUIET_SECONDS`);
* **Ctrl-C**: the ``KeyboardInterrupt`` lands in the main thread's wait, which asks the loop to stop, waits until
  the compiled program has returned (within one iteration) and re-raises: nothing keeps computing in the
  background, and the interpreter, a notebook kernel, stays usable.

One fit is monitored at a time per process (a module-level slot guarded by a lock); a second concurrent
monitored fit raises ``RuntimeError`` instead of mixing their reports.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: A fit that runs longer than this many seconds shows progress even without ``verbose``.
QUIET_SECONDS = 5.0
#: Least seconds between two progress updates.
UPDATE_SECONDS = 0.5
#: Fits below this estimated work per iteration (rows x leaves x expert outputs x design columns²) are not
#: monitored unless ``verbose``: an iteration takes a few milliseconds, the host callback about one, and the
#: whole fit returns before a user would reach for Ctrl-C.
MIN_WORK = 10_000_000


def worth_monitoring(spec, n_rows: int) -> bool:
    """Whether an EM iteration is expensive enough that a per-iteration host report costs little (< ~10%)."""
    q = spec.n_expert_features + 1
    return n_rows * spec.tree.n_leaves * spec.n_expert_outputs * q * q >= MIN_WORK

_lock = threading.Lock()
_active: FitMonitor | None = None


class FitMonitor:
    """Receives per-iteration reports from a compiled fit; answers whether to stop.

    Parameters
    ----------
    max_iter : iterations allowed per restart (the bar's total)
    verbose : show progress from the start (otherwise only once the fit is slow)
    label : what the bar says ("EM", "L-BFGS", ...)
    what : what the reported objectives are one per ("restarts", "chains", ...)
    """

    def __init__(self, max_iter: int, verbose: int = 0, label: str = "EM", stream=None, what: str = "restarts"):
        self.what = what
        self.max_iter = int(max_iter)
        self.verbose = int(verbose)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.stop_requested = False
        self.start = time.perf_counter()
        self.last_update = -np.inf
        self.iteration = 0
        self.best = -np.inf
        self.reports = 0
        self._bar = None

    def __call__(self, k: np.ndarray, objective: np.ndarray) -> bool:
        self.reports += 1
        k = np.atleast_1d(np.asarray(k))
        obj = np.atleast_1d(np.asarray(objective, np.float64))
        self.iteration = int(k.max())
        finite = obj[np.isfinite(obj)]
        if finite.size:
            self.best = max(self.best, float(finite.max()))
        now = time.perf_counter()
        show = self.verbose > 0 or now - self.start > QUIET_SECONDS
        if show and now - self.last_update >= UPDATE_SECONDS:
            self.last_update = now
            self._show(len(k))
        return self.stop_requested

    def _show(self, n_restarts: int):
        if self._bar is None:
            from tqdm import tqdm  # the text bar: tqdm.auto's notebook widget would need ipywidgets

            self._bar = tqdm(total=self.max_iter, desc=self.label, unit="it", file=self.stream, leave=False,
                             dynamic_ncols=True)
        self._bar.n = self._bar.last_print_n = min(self.iteration, self.max_iter)
        self._bar.set_postfix_str(f"{self.what} {n_restarts}, best objective {self.best:.6g}", refresh=False)
        self._bar.refresh()

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def report(k: jax.Array, objective: jax.Array) -> jax.Array:
    """Inside a compiled loop: hand (iteration, objective) to the active monitor; True means stop."""

    def host(k, obj):
        mon = _active
        stop = bool(mon(k, obj)) if mon is not None else False
        return np.full(np.shape(k), stop, dtype=bool)

    return jax.pure_callback(host, jax.ShapeDtypeStruct(jnp.shape(k), jnp.bool_), k, objective,
                             vmap_method="broadcast_all")


def wanted(spec, n_rows: int, verbose: int, interruptible: bool) -> bool:
    """Whether a fit compiles the per-iteration report in: always when ``verbose``, else for expensive iterations;
    never when the rows are sharded over several devices (:mod:`hme.sharding`: a host callback inside a
    partitioned loop would run once per device)."""
    from .sharding import n_shards

    if n_shards() > 1:
        return False
    return bool(verbose) or (interruptible and worth_monitoring(spec, n_rows))


def launch(dispatch, monitored: bool, max_iter: int, verbose: int, label: str, n_init: int) -> Any:
    """``dispatch()`` directly, or under :func:`run_monitored` with a :class:`FitMonitor` when ``monitored``."""
    if not monitored:
        return dispatch()
    label = f"{label} ({n_init} restart{'s' if n_init > 1 else ''})"
    return run_monitored(dispatch, FitMonitor(max_iter, verbose, label=label))


def run_monitored(dispatch, monitor: FitMonitor, poll: float = 0.05) -> Any:
    """Run ``dispatch()`` (which launches the compiled fit) with ``monitor`` active and return its result, ready.

    ``dispatch`` runs in a helper thread (tracing and compiling included, :func:`run_in_worker`); on Ctrl-C the
    loop is asked to stop, and the interrupt is re-raised once the compiled program has returned (within one
    iteration), so nothing is left running."""
    global _active
    if not _lock.acquire(blocking=False):
        raise RuntimeError("another monitored hme fit is running in this process; run fits one after another")
    try:
        _active = monitor

        def stop():
            monitor.stop_requested = True

        return run_in_worker(dispatch, on_interrupt=stop, poll=poll)
    finally:
        _active = None
        monitor.close()
        _lock.release()


def run_in_worker(fn, on_interrupt=None, poll: float = 0.05) -> Any:
    """``jax.block_until_ready(fn())`` computed in a helper thread while the calling thread waits; returns it.

    Python runs signal handlers in the main thread only, so the ``KeyboardInterrupt`` of a Ctrl-C lands in this
    wait, never inside JAX's dispatch or tracing code (where an exception raised at an arbitrary point can leave
    its state half-updated). On ``KeyboardInterrupt``, ``on_interrupt()`` is called (e.g. to ask a compiled loop
    to stop), the wait goes on until ``fn`` has returned (further Ctrl-C presses meanwhile are absorbed, so
    nothing is left running) and the interrupt is re-raised. Exceptions of ``fn`` are re-raised in the calling
    thread. ``fn`` runs in the caller's context (:func:`in_callers_context`).

    The wait is an ``Event``, not ``Thread.join(timeout)``: on CPython 3.11 an interrupt inside ``join`` can mark a
    still-running thread as stopped (the bpo-45274 handler releases the running thread's state lock), after which
    ``join()`` returns at once and the computation would keep running unwatched in the background.
    """
    box: dict = {}
    finished = threading.Event()
    fn = in_callers_context(fn)

    def target():
        try:
            box["result"] = jax.block_until_ready(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            box["error"] = exc
        finally:
            finished.set()

    worker = threading.Thread(target=target, name="hme-fit", daemon=True)
    try:
        worker.start()
        try:
            while not finished.wait(poll):
                pass
        except KeyboardInterrupt:
            if on_interrupt is not None:
                on_interrupt()
            _wait_absorbing_interrupts(finished, poll)
            raise
    finally:
        if finished.is_set():
            worker.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def in_callers_context(fn):
    """``fn`` wrapped to run, in another thread, as it would in the calling one. A new thread starts with JAX's
    global settings and empty context variables: an estimator's float64 scope (``jax.enable_x64``) would be lost,
    and the fit traced in float32 with float64 inputs (a warning per operation), and so would the data-parallel
    mesh of :mod:`hme.sharding`. The wrapper carries the caller's context variables and its JAX x64, default
    device and default matmul precision settings."""
    ctx = contextvars.copy_context()
    x64 = bool(jax.config.jax_enable_x64)
    device, precision = jax.config.jax_default_device, jax.config.jax_default_matmul_precision

    def run():
        with jax.enable_x64(x64), jax.default_device(device), jax.default_matmul_precision(precision):
            return ctx.run(fn)

    return run


def _wait_absorbing_interrupts(event: threading.Event, poll: float) -> None:
    """Wait until ``event`` is set; a Ctrl-C meanwhile does not cut the wait short (the loop is already stopping)."""
    while not event.is_set():
        try:
            event.wait(poll)
        except KeyboardInterrupt:
            continue
