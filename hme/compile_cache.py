r"""JAX's persistent compilation cache, on by default, so that a fresh process skips most of hme's compiles.

Compiling hme's EM programs dominates a first fit (seconds to tens of seconds; the fit itself often takes less).
JAX can keep compiled programs on disk and load them in later processes; hme turns that on the first time it is
about to compile, unless the user has chosen otherwise:

* ``HME_COMPILATION_CACHE=0`` (or ``off``/``false``/``no``) keeps it off;
* ``HME_COMPILATION_CACHE=/some/dir`` puts it there;
* a cache directory already set in JAX (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.update("jax_compilation_cache_dir", ...)`` before the first fit) is left exactly as the user set it;
* otherwise it lives in ``$XDG_CACHE_HOME/hme/jax`` (``~/.cache/hme/jax``).

The cache is capped at ``HME_COMPILATION_CACHE_MAX_MB`` megabytes (default 1024); JAX evicts the least recently
used programs beyond it. The cap also makes JAX take a file lock (``filelock``) around every read and write of the
directory, so processes that share it (two test workers, parallel grid searches) never read an entry that another
is still writing. Without the cap JAX writes entries unlocked and not atomically. Only programs that took at least
``jax_persistent_cache_min_compile_time_secs`` to compile are stored (JAX's default, 1 s: hme's fitting programs).

Entries are keyed by the program, the JAX and XLA versions and the machine, so a stale entry is never used; it
merely takes space until evicted. The setting is process-wide (JAX has one cache): programs of the user's own
that compile for longer than the threshold are stored there too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax

log = logging.getLogger("hme")

ENV_SWITCH = "HME_COMPILATION_CACHE"
ENV_MAX_MB = "HME_COMPILATION_CACHE_MAX_MB"
DEFAULT_MAX_MB = 1024
_OFF = ("0", "off", "false", "no")

_decided = False
_directory: str | None = None


def default_directory() -> Path:
    """``$XDG_CACHE_HOME/hme/jax``, or ``~/.cache/hme/jax`` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hme" / "jax"


def max_bytes() -> int:
    """The size cap in bytes, from ``HME_COMPILATION_CACHE_MAX_MB`` (default 1024 MB)."""
    raw = os.environ.get(ENV_MAX_MB, str(DEFAULT_MAX_MB))
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_MAX_MB} must be a number of megabytes, got {raw!r}") from None
    if not mb > 0:
        raise ValueError(f"{ENV_MAX_MB} must be positive (set {ENV_SWITCH}=0 to turn the cache off), got {raw!r}")
    return int(mb * 2**20)


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def enable_default() -> str | None:
    """Turn on JAX's persistent compilation cache as described in the module docstring; the first call decides,
    later calls only return the decision.

    Returns
    -------
    The cache directory in use (hme's or the user's), or None when the cache is off.
    """
    global _decided, _directory
    if _decided:
        return _directory
    _decided = True
    user_dir = jax.config.jax_compilation_cache_dir
    if user_dir:
        _directory = user_dir
        return _directory
    choice = os.environ.get(ENV_SWITCH, "").strip()
    if choice.lower() in _OFF:
        return None
    cap_bytes = max_bytes()
    try:
        import filelock  # noqa: F401  (JAX's LRU cache locks the directory with it)
    except ImportError:
        log.debug("hme: the filelock package is missing, so the persistent compilation cache stays off")
        return None
    path = Path(choice).expanduser() if choice else default_directory()
    if not _writable(path):
        log.debug("hme: cannot write to %s, so the persistent compilation cache stays off", path)
        return None
    cap = getattr(jax.config, "jax_compilation_cache_max_size", None)
    if cap is None:  # a JAX without the cap: its cache would be unlocked
        log.debug("hme: this JAX cannot cap its compilation cache, so the persistent cache stays off")
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    if cap == -1:  # JAX's default: unbounded, and then unlocked
        jax.config.update("jax_compilation_cache_max_size", cap_bytes)
    _directory = str(path)
    return _directory


def directory() -> str | None:
    """The persistent cache directory in use, or None while it is off or not yet decided (before the first fit)."""
    return _directory if _decided else None
