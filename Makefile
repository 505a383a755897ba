# Two entry points for a fresh machine: `make demo` and `make test` (README).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[torch,test,dev]'
	touch $(STAMP)

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest -n 2 --dist loadgroup --durations=15

bench: install
	$(BIN)/python bench/push_pull.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
