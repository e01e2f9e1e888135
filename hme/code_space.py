r"""Keep a long-lived process within the kernel's limit on memory mappings, which XLA:CPU's JIT uses up.

Every program XLA compiles for the CPU is linked in memory by LLVM's JIT, and each compiled kernel gets its own
code, read-only and writable pages: three memory mappings (VMAs) per kernel, about 500-700 for one of hme's EM
programs. Linux caps the mappings of a process at ``vm.max_map_count`` (65,530 by default), so a process that
compiles roughly a hundred distinct fitting programs (a notebook session, a grid search over static settings, a
test run) reaches the cap. The next compile then fails inside LLVM with ``Cannot allocate memory``
("Failed to materialize symbols"), and raising that error as a C++ exception can crash the interpreter with a
segfault in the unwinder. See llvm/llvm-project#63236 (the JIT's memory mapper makes no attempt to coalesce
mappings) and pasteurlabs/mosaic#15 (the same failure in another JAX program).

Compiled programs live in JAX's caches; dropping them (``jax.clear_caches()``) unmaps their code. So before hme
compiles, :func:`ensure_code_space` compares the process's mappings with the cap and, when fewer than
``headroom`` mappings are left, clears JAX's caches (programs are recompiled on demand) and logs a warning on the
``hme`` logger. If even that leaves less than :data:`RESERVE` mappings (something else holds the mappings), it
raises :class:`MemoryError` with the numbers and the remedy, instead of letting the compiler crash the process.

The persistent compilation cache (:mod:`hme.compile_cache`) needs the same room once more: writing a program to
it serialises the executable, which maps code again, so a process near the cap that still compiles can crash in
JAX's ``put_executable_and_time`` (the crash that once took the cache out of the test suite). :data:`RESERVE`
covers the compile and that write together.

The mappings are counted from ``/proc/self/maps`` (Linux only; elsewhere the guard does nothing), and only when
something has been compiled since the last count, so calls that reuse compiled programs cost nothing.
"""

from __future__ import annotations

import gc
import logging

import jax

log = logging.getLogger("hme")

#: Mappings that must stay free for one more compile and its write to the persistent cache (a depth-2 EM
#: program needs about 2,000 to compile and crashed while being serialised with 2,600 free).
RESERVE = 6_000
#: Clear JAX's caches when fewer than this fraction of the cap is free (at least :data:`RESERVE` x 2).
HEADROOM_FRACTION = 0.2

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles_since_check = 1  # count once on the first call
_MAPS = "/proc/self/maps"
_LIMIT = "/proc/sys/vm/max_map_count"


def _on_duration_event(event: str, duration: float, **kwargs) -> None:
    global _compiles_since_check
    if event == _BACKEND_COMPILE_EVENT:
        _compiles_since_check += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration_event)


def map_count() -> int | None:
    """Memory mappings (VMAs) of this process, or None where ``/proc/self/maps`` does not exist."""
    try:
        with open(_MAPS, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def map_limit() -> int | None:
    """The kernel's cap on mappings per process (``vm.max_map_count``), or None where it cannot be read."""
    try:
        with open(_LIMIT) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def ensure_code_space(headroom: int | None = None) -> None:
    """Make sure the next compile has room for its code: clear JAX's caches when the process nears the cap.

    headroom : free mappings below which the caches are cleared; default ``max(HEADROOM_FRACTION * cap,
        2 * RESERVE)``

    Raises
    ------
    MemoryError
        when fewer than :data:`RESERVE` mappings are free even after clearing the caches.
    """
    global _compiles_since_check
    if _compiles_since_check == 0 and headroom is None:
        return
    count, limit = map_count(), map_limit()
    _compiles_since_check = 0
    if count is None or limit is None:
        return
    if headroom is None:
        headroom = max(int(HEADROOM_FRACTION * limit), 2 * RESERVE)
    if limit - count >= headroom:
        return
    jax.clear_caches()
    gc.collect()
    after = map_count()
    log.warning(
        "hme: this process holds %d of the %d memory mappings Linux allows (vm.max_map_count), mostly code of "
        "programs compiled earlier; cleared JAX's compilation caches (now %d mappings). Programs compile again "
        "when next used.", count, limit, after)
    if after is not None and limit - after < RESERVE:
        raise MemoryError(
            f"this process holds {after} of the {limit} memory mappings Linux allows (vm.max_map_count) even "
            f"after clearing JAX's caches, so compiling another program would fail inside XLA. Free what holds "
            f"them, run the fit in a fresh process, or raise the cap (sysctl -w vm.max_map_count=262144).")
