# The two commands a newcomer needs: `make up` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test install lint typecheck unit down clean browser helm

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

## headless Chromium + chromedriver for the admin console's browser test (Debian packages,
## installed only when missing; without root or apt the browser test is skipped)
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver (Debian packages)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	      >/dev/null) || echo "WARNING: chromium could not be installed; the browser test will be skipped"; \
	  else echo "WARNING: chromium is not installed; the browser test will be skipped"; fi; \
	fi

## helm for the chart's render-and-validate test (tests/integration/test_k8s_chart.py), built once
## from its Go module into ~/.cache/paystream/tools (about 2 minutes here); without Go the test is
## skipped, loudly
helm: install
	@$(BIN)/paystream k8s helm || echo "WARNING: helm could not be built; the chart test will be skipped"

## make test: start what the tests need (idempotent) and run every test
test: install browser helm
	$(BIN)/paystream up --stack-only
	$(BIN)/pytest -p no:cacheprovider

unit: install
	$(BIN)/pytest -p no:cacheprovider tests/unit

lint: install
	$(BIN)/paystream k8s generate --check
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

down: install
	$(BIN)/paystream stack down
