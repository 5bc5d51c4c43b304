# Popoto developer tasks. Everything runs inside a local virtualenv (.venv),
# created on first use from pyproject.toml; only Python 3 and PyPI are needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVER := $(BIN)/python -m popoto.testing.server run --
PYTEST_ARGS ?=
# the ORM suite, run a second time on a local 3-master Redis Cluster (tests/conftest.py)
CLUSTER_TESTS := tests/models tests/query tests/fields tests/behaviours tests/test_keys.py \
	tests/test_encoding.py

.PHONY: venv demo test test-fast lint lint-lua bench run clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(SERVER) sh -c '$(BIN)/python -m ops.demo && $(BIN)/python -m ops.demo_background && $(BIN)/python -m ops.demo_cluster'

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	POPOTO_TEST_CLUSTER=1 $(BIN)/python -m pytest $(CLUSTER_TESTS) $(PYTEST_ARGS)

# the standalone run without the tests marked slow (property test, large rebuilds,
# multi-process races, fault injection); `make test` still runs everything
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) lint-lua
	$(BIN)/ruff check popoto tasks workers ops tests
	$(BIN)/lint-imports --no-cache

# the server-side scripts (popoto/lua), configured by .luacheckrc
lint-lua:
	@command -v luacheck >/dev/null || { echo "luacheck not found: apt-get install lua-check"; exit 1; }
	luacheck -q --no-color popoto/lua

bench: $(STAMP)
	$(SERVER) $(BIN)/python -m ops.bench

# honcho gives the web process PORT=5000: the app on http://127.0.0.1:5000/, the dashboard
# on http://127.0.0.1:5000/ops/ (read-only unless POPOTO_DASHBOARD_TOKEN is set)
run: $(STAMP)
	@if [ -n "$$POPOTO_DASHBOARD_TOKEN" ]; then mode="actions need the token"; \
	  else mode="read-only: set POPOTO_DASHBOARD_TOKEN for actions"; fi; \
	  echo "make run: web app http://127.0.0.1:5000/  dashboard http://127.0.0.1:5000/ops/ ($$mode)"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(SERVER) $(BIN)/honcho start

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
