# `make demo` and `make test` each create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export JAX_COMPILATION_CACHE_DIR ?= $(HOME)/.cache/hme/jax

.PHONY: demo test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hme demo

# Two workers: the suite is dominated by XLA compilation, which runs on one core per program.
# The per-test watchdog (pytest-timeout, set in pyproject.toml) fails a hung test with its traceback instead
# of blocking CI. No persistent compilation cache (CI starts cold anyway).
# TEMPORARY (issue #10, not yet root-caused): jaxlib 0.10.2's XLA:CPU compiler still segfaults inside
# backend_compile_and_load about once per full run, in a different test each time, with no LAPACK call in any
# of hme's programs (seen in test_gaussian_gate_gradient_matches_joint_em). Only a test whose worker *crashed*
# is run once more; failed assertions and hangs are never rerun. Remove this once the crash is understood.
RERUN_CRASHES := --reruns 1 --only-rerun "crashed while running"
test: $(STAMP)
	JAX_COMPILATION_CACHE_DIR= $(BIN)/python -m pytest -q -n 2 -m "not slow" $(RERUN_CRASHES)
	JAX_COMPILATION_CACHE_DIR= JAX_ENABLE_X64=0 $(BIN)/python -m pytest -q -n 2 -m "not slow" $(RERUN_CRASHES) tests/test_em.py tests/test_estimators.py tests/test_gradient.py -k "float32 or recompile or dtype"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_em.py

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache *.egg-info
