r"""Traced programs kept on disk (``jax.export``), so that a fresh process skips tracing as well as compiling.

JAX's persistent compilation cache (:mod:`hme.compile_cache`) stores *compiled* programs, but it finds them by the
lowered program: every fresh process still traces hme's Python code and lowers it before it can look the program
up. For a default fit that is seconds (3 s of a 4 s warm first fit on flexmix's K=4 problem), more than the fit.
:func:`exported_jit` is ``jax.jit`` for hme's fitting programs with one more layer: the first time a program runs
for a given model structure, configuration and argument shapes, it is exported (``jax.export``: the lowered
StableHLO and its calling convention) and serialised to ``<cache directory>/hme-exported/``; a later process
that meets the same key deserialises it and runs it, and its compilation is then a hit in JAX's cache.

The key is a SHA-256 of everything the program depends on: the function, the static arguments (model
specification and fit configuration, by ``repr``), the argument tree and each leaf's shape, dtype and weak type,
the JAX and jaxlib versions, the JAX settings that change what a program computes (:data:`TRACING_CONFIG`:
``jax_enable_x64``, the default matmul precision, the PRNG implementation, ...), the backend's platform and
device kind, and the bytes of every source file of the ``hme`` package (an edited hme never runs a stale
program). A program is run the ordinary way (``jax.jit``, nothing stored) when

* the persistent cache is off (``HME_COMPILATION_CACHE=0``, an unwritable directory: see
  :mod:`hme.compile_cache`, whose switch governs both);
* the process has more than one device (an exported program's results are committed to its device, and could
  then not meet arrays sharded over several, :mod:`hme.sharding`);
* it is called inside another trace, with arguments on a device other than the default one, or with a
  configuration that ``eligible`` rejects (:func:`hme.em.exportable`: fits that report to the host every
  iteration, since host callbacks cannot be exported, and models with a gate or expert family the user
  registered, whose code the key does not cover);
* a static argument's ``repr`` is not stable across processes (it shows an object address);
* exporting fails (a primitive without a stable serialisation): then once per process and key.

Compiler options: programs over at most :data:`FAST_COMPILE_MAX_ROW_LEAVES` row-leaf pairs compile with
XLA:CPU's legacy loop emitters (:func:`compiler_options_for`), which compile faster; larger ones keep XLA's
defaults, whose kernels run faster.

Exported programs take about 0.1-1 MB each. The directory is capped at :data:`MAX_FRACTION` of the compilation
cache's cap (``HME_COMPILATION_CACHE_MAX_MB``); the least recently used files go first. A file that cannot be
read back (truncated, from another hme) is deleted and the program exported again. Files are written to a
temporary name and renamed, so processes sharing the directory never read a partial file.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import logging
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import jaxlib

from . import compile_cache

log = logging.getLogger("hme")

SUBDIRECTORY = "hme-exported"
SUFFIX = ".exported"
#: the exported programs may take this fraction of the compilation cache's size cap
MAX_FRACTION = 0.1

#: what this process did, per outcome ("exported", "loaded", "jit"): for tests and benchmarks
counts: dict[str, int] = {"exported": 0, "loaded": 0, "jit": 0}

#: JAX settings that change what a traced program computes (dtypes, matmul precision, random bits)
TRACING_CONFIG = ("jax_enable_x64", "jax_default_matmul_precision", "jax_default_prng_impl",
                  "jax_threefry_partitionable", "jax_random_seed_offset", "jax_numpy_dtype_promotion",
                  "jax_numpy_rank_promotion", "jax_enable_custom_prng", "jax_softmax_custom_jvp")

_programs: dict = {}
_digest: str | None = None


def source_digest() -> str:
    """SHA-256 over the path and bytes of every ``.py`` file of the ``hme`` package (read once per process)."""
    global _digest
    if _digest is None:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
        _digest = h.hexdigest()
    return _digest


def store_directory() -> Path | None:
    """``<compilation cache directory>/hme-exported``, or None while the persistent cache is off (or the
    ``flatbuffers`` package is missing)."""
    base = compile_cache.enable_default()
    if base is None or importlib.util.find_spec("flatbuffers") is None:  # jax.export serialises with it
        return None
    path = Path(base) / SUBDIRECTORY
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK | os.X_OK) else None


def _abstract(leaf) -> tuple:
    a = jax.typeof(leaf)
    return tuple(a.shape), str(a.dtype), bool(getattr(a, "weak_type", False))


def _local(leaf) -> bool:
    """A host value, or an array on the default device alone."""
    sharding = getattr(leaf, "sharding", None)
    return sharding is None or sharding.device_set == {jax.devices()[0]}


def _disk_key(name: str, static: tuple, tree, avals: tuple) -> str | None:
    text = repr(static)
    if " at 0x" in text:  # an object's default repr: differs between processes
        return None
    backend = jax.devices()[0]
    config = tuple((k, str(jax.config.values.get(k))) for k in TRACING_CONFIG)
    parts = (name, text, str(tree), avals, jax.__version__, jaxlib.__version__, config, backend.platform,
             getattr(backend, "device_kind", ""), source_digest())
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _write(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        raise


def _evict(directory: Path) -> None:
    """Delete the least recently used exported programs while the directory exceeds its share of the cap."""
    cap = MAX_FRACTION * compile_cache.max_bytes()
    try:
        files = [(p.stat().st_mtime, p.stat().st_size, p) for p in directory.glob("*" + SUFFIX)]
    except OSError:
        return
    total = sum(size for _, size, _ in files)
    for _, size, p in sorted(files, key=lambda f: f[0]):
        if total <= cap:
            break
        p.unlink(missing_ok=True)
        total -= size


def _load(path: Path):
    try:
        blob, out_tree = pickle.loads(path.read_bytes())
        exported = jax.export.deserialize(bytearray(blob))
    except FileNotFoundError:
        return None
    except Exception as err:  # a truncated or foreign file: drop it and export again
        log.debug("hme: dropping unreadable exported program %s (%s)", path, err)
        path.unlink(missing_ok=True)
        return None
    try:
        os.utime(path)  # least recently used goes first
    except OSError:
        pass
    return exported, out_tree


def _export(fun: Callable, static: dict, tree, avals: tuple):
    box = {}

    def flat(*leaves):
        out = fun(**static, **jax.tree_util.tree_unflatten(tree, leaves))
        out_leaves, box["tree"] = jax.tree_util.tree_flatten(out)
        return out_leaves

    shapes = [jax.ShapeDtypeStruct(shape, dtype, weak_type=weak) for shape, dtype, weak in avals]
    exported = jax.export.export(jax.jit(flat))(*shapes)
    return exported, box["tree"]


def _program(fun: Callable, static: dict, tree, avals: tuple, options: dict):
    """A callable on the flat leaves (loaded or exported), or None to run the ordinary jit."""
    directory = store_directory()
    if directory is None or jax.device_count() > 1:  # an exported call commits its results to one device
        return None
    key = _disk_key(f"{fun.__module__}.{fun.__qualname__}", tuple(static.items()), tree, avals)
    if key is None:
        return None
    path = directory / (key + SUFFIX)
    found = _load(path)
    if found is not None:
        counts["loaded"] += 1
    else:
        try:
            found = _export(fun, static, tree, avals)
            payload = pickle.dumps((found[0].serialize(), found[1]))
        except Exception as err:  # not exportable: run it the ordinary way in this process
            log.debug("hme: %s runs without an exported program (%s)", fun.__qualname__, err)
            return None
        try:
            _write(path, payload)
            _evict(directory)
        except OSError as err:
            log.debug("hme: could not store exported program %s (%s)", path, err)
        counts["exported"] += 1
    exported, out_tree = found
    call = jax.jit(exported.call, compiler_options=options or None)
    return lambda leaves: jax.tree_util.tree_unflatten(out_tree, call(*leaves))


#: XLA:CPU's fusion emitters (its default since 2025) compile hme's fitting programs up to 1.8x slower than the
#: legacy loop emitters, and a whole default fit with them runs up to 2.2x faster (``docs/compile.md``). The
#: persistent cache pays the compile once per machine, the run is paid at every fit; so only the smallest
#: programs, at most this many row-leaf pairs (padded rows x leaves), use the legacy emitters: there the compile
#: saves seconds and the slower run costs tens of milliseconds per fit.
FAST_COMPILE_MAX_ROW_LEAVES = 1 << 14


def compiler_options_for(n_rows: int, n_leaves: int) -> dict:
    """XLA options for a fitting program over ``n_rows`` (padded) rows and ``n_leaves`` leaves: on a CPU, the
    legacy emitters when ``n_rows * n_leaves <= FAST_COMPILE_MAX_ROW_LEAVES`` (faster to compile), else XLA's
    defaults."""
    if jax.default_backend() != "cpu" or n_rows * n_leaves > FAST_COMPILE_MAX_ROW_LEAVES:
        return {}
    return {"xla_cpu_use_fusion_emitters": False}


def exported_jit(fun: Callable | None = None, *, static_argnames: tuple[str, ...],
                 eligible: Callable[..., bool] | None = None, options: Callable[..., dict] | None = None):
    """``jax.jit(fun, static_argnames=...)`` whose programs are also kept on disk across processes (module
    docstring). ``eligible(**static_args)`` may refuse a configuration (it then always runs the ordinary jit);
    ``options(**all_args)`` may choose XLA compiler options from the arguments' shapes (not called inside another
    trace, where the program is inlined into the caller's)."""
    if fun is None:
        return functools.partial(exported_jit, static_argnames=static_argnames, eligible=eligible, options=options)
    variants: dict = {}

    def jitted_with(opts: dict):
        key = tuple(sorted(opts.items()))
        if key not in variants:
            variants[key] = jax.jit(fun, static_argnames=static_argnames, compiler_options=opts or None)
        return variants[key]

    signature = inspect.signature(fun)

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        static = {k: v for k, v in bound.arguments.items() if k in static_argnames}
        dynamic = {k: v for k, v in bound.arguments.items() if k not in static_argnames}
        leaves, tree = jax.tree_util.tree_flatten(dynamic)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):  # inlined into the caller's program
            return jitted_with({})(*args, **kwargs)
        opts = options(**bound.arguments) if options is not None else {}
        jitted = jitted_with(opts)
        if (eligible is not None and not eligible(**static)) or not all(_local(leaf) for leaf in leaves):
            counts["jit"] += 1
            return jitted(*args, **kwargs)
        avals = tuple(_abstract(leaf) for leaf in leaves)
        memo_key = (fun, tuple(static.items()), tree, avals, tuple(sorted(opts.items())))
        if memo_key not in _programs:
            _programs[memo_key] = _program(fun, static, tree, avals, opts)
        program = _programs[memo_key]
        if program is None:
            counts["jit"] += 1
            return jitted(*args, **kwargs)
        return program(leaves)

    def cache_size() -> int:
        """Programs this function holds: the plain jit's plus the exported ones loaded or built here."""
        held = sum(j._cache_size() for j in variants.values())
        return held + sum(1 for k, v in _programs.items() if k[0] is fun and v is not None)

    wrapper.lower = lambda *a, **kw: jitted_with({}).lower(*a, **kw)
    wrapper._cache_size = cache_size
    return wrapper
