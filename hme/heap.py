"""Give freed heap memory back to the operating system.

Compiling an XLA program allocates tens of MB that are freed when compilation ends, but glibc's allocator keeps
freed memory in its arenas (one per thread), so a process's resident memory only grows. A streamed fit, whose
memory is meant to be bounded by its chunk, calls :func:`release` after the steps that compile, so the next
step starts from the memory in use rather than the high-water mark. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:  # pragma: no cover - no C library to load
        return None


def release() -> bool:
    """``malloc_trim(0)`` where glibc provides it: whether memory was returned."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
