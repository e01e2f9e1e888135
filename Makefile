# `make demo` and `make test` each create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench notebooks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hme demo

# ruff: pyflakes, pycodestyle, isort, bugbear, pyupgrade and NumPy rules, line length 120 (pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check .

# Two workers: the suite is dominated by XLA compilation, which runs on one core per program.
# The per-test watchdog (pytest-timeout, set in pyproject.toml) fails a hung test with its traceback instead
# of blocking CI. The workers share hme's persistent compilation cache (on by default, ~/.cache/hme/jax; see
# hme.compile_cache), so a program compiled by one is loaded by the other and by later runs.
# Nothing is rerun: a crash or a hang is a bug to root-cause. (The compile segfault that hit about one run in
# two was the JIT exhausting vm.max_map_count; hme.code_space guards against it, see the README.)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" --durations=25
	JAX_ENABLE_X64=0 $(BIN)/python -m pytest -q -n 2 -m "not slow" tests/test_em.py tests/test_estimators.py tests/test_gradient.py -k "float32 or recompile or dtype"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# Executes every notebook in full and stores its outputs in the paired .ipynb (the tests run the small mode,
# HME_NOTEBOOK_SMALL=1). Run it after changing the code so that committed outputs show what the code does now.
notebooks: $(STAMP)
	cd notebooks && for nb in *.py; do \
		../$(BIN)/jupytext --sync $$nb && ../$(BIN)/jupyter execute --inplace $${nb%.py}.ipynb || exit 1; \
	done

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_em.py

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache *.egg-info
