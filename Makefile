# `make demo` and `make test` are all the set-up a new machine needs: each creates .venv when it is
# missing and installs the package (editable) with what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= demo_out
# Two cores on CI: xdist's two workers halve the suite's wall time.
PYTEST_WORKERS ?= 2

.PHONY: demo test bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py  # setup.py maps kernels/ to jaxinterp.kernels
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/jaxinterp demo --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) tests

bench: $(STAMP)
	$(BIN)/jaxinterp bench --quick --out bench_out

clean:
	rm -rf $(VENV) demo_out bench_out build *.egg-info
