# Every target works from a fresh clone: the venv is made here, from the project's own files.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv test lint typecheck pytest demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest -n 2 -q

test: lint typecheck pytest

demo: venv
	$(BIN)/python examples/demo.py

bench: venv
	$(BIN)/python bench/push_vs_cp.py
	$(BIN)/python bench/ls_many.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
