# `make test` and `make demo` create .venv and install the project when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

demo: $(STAMP)
	$(BIN)/progan demo

bench: $(STAMP)
	$(BIN)/python bench/bench_train_step.py
	$(BIN)/python bench/bench_swd.py
	$(BIN)/python bench/bench_fid.py
	$(BIN)/python bench/bench_celebahq.py

clean:
	rm -rf $(VENV) .pytest_cache .progan
