# The two commands a newcomer needs: `make up` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test install lint typecheck unit down clean

$(BIN)/paystream: pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "python3.11 is required"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/paystream

## make up: create .venv, install paystream, start the stack and every component
up: install
	$(BIN)/paystream up

## make test: start what the tests need (idempotent) and run every test
test: install
	$(BIN)/paystream up --stack-only
	$(BIN)/pytest -p no:cacheprovider

unit: install
	$(BIN)/pytest -p no:cacheprovider tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

down: install
	$(BIN)/paystream stack down
