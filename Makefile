# `make run` and `make test` create .venv on first use and install the exact versions in requirements.lock.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install install-browser run worker serve demo test lint clean bench-env bench-overhead bench-serving

install: $(INSTALLED)

$(INSTALLED): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(INSTALLED)

run: install
	scripts/run-local.sh

serve: install
	$(BIN)/convention-gateway serve

worker: install
	$(BIN)/convention-gateway worker

demo: install
	$(BIN)/convention-gateway demo

test: install
	$(BIN)/python -m pytest -q

# Headless Chromium for tests/test_dashboard.py, from the Debian package registry (needs root). Without it that
# test is skipped.
install-browser:
	@if [ -x /usr/bin/chromium ]; then \
		echo "Chromium is already installed at /usr/bin/chromium"; \
	else \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-liberation; \
	fi

lint: install
	$(BIN)/ruff check gateway adapters trainer clients tests
	$(BIN)/ruff format --check gateway adapters trainer clients tests

clean:
	rm -rf $(VENV)

bench-env:
	$(PYTHON) -m venv bench/.venv-litellm-proxy
	bench/.venv-litellm-proxy/bin/pip install --quiet "litellm[proxy]==1.104.0"

bench-overhead: install
	$(BIN)/python -m bench.overhead

bench-serving: install
	$(BIN)/python -m bench.serving
