# Popoto developer tasks. Everything runs inside a local virtualenv (.venv),
# created on first use from pyproject.toml; only Python 3 and PyPI are needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVER := $(BIN)/python -m popoto.testing.server run --
# `make bench`: the peers (walrus, redis-om: the `bench` extra, with matplotlib) and
# popoto 1.10.1 from PyPI in its own virtualenv (it imports as `popoto` too).
BENCH_STAMP := $(VENV)/.bench-installed
POPOTO1_VENV := .venv-popoto1
POPOTO1_STAMP := $(POPOTO1_VENV)/.installed
BENCH_ARGS ?=
PYTEST_ARGS ?=
# the ORM suite, run a second time on a local 3-master Redis Cluster (tests/conftest.py)
CLUSTER_TESTS := tests/models tests/query tests/fields tests/behaviours tests/test_keys.py \
	tests/test_encoding.py

.PHONY: venv demo test test-fast test-oldest lint lint-lua bench run clean

venv: $(STAMP)

# $(call dev_venv,PYTHON,DIR): a virtualenv at DIR with this checkout and its dev extra
define dev_venv
	$(1) -m venv $(2)
	$(2)/bin/pip install -q --upgrade pip
	$(2)/bin/pip install -q -e '.[dev]'
	touch $(2)/.installed
endef

$(STAMP): pyproject.toml
	$(call dev_venv,$(PYTHON),$(VENV))

demo: $(STAMP)
	$(SERVER) sh -c '$(BIN)/python -m popoto.ops.examples.demo && $(BIN)/python -m popoto.ops.examples.demo_background && $(BIN)/python -m popoto.ops.examples.demo_cluster'

test: $(STAMP) $(POPOTO1_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	POPOTO_TEST_CLUSTER=1 $(BIN)/python -m pytest $(CLUSTER_TESTS) $(PYTEST_ARGS)

# the standalone run without the tests marked slow (property test, large rebuilds,
# multi-process races, fault injection); `make test` still runs everything
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# the oldest Python of requires-python (3.10): its own virtualenv, the standalone run
# without the slow tests. CI runs it; on a machine without Python 3.10 it says so and stops.
ifndef OLDEST_PYTHON
OLDEST_PYTHON := $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10 \
	  /usr/bin/python3.10; do "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' \
	  2>/dev/null && { echo "$$p"; break; }; done)
endif
OLDEST_VENV := .venv-py310
OLDEST_STAMP := $(OLDEST_VENV)/.installed
ifeq ($(OLDEST_PYTHON),)
test-oldest:
	@echo "WARNING: no Python 3.10 found: the Python 3.10 run did not happen"
else
$(OLDEST_STAMP): pyproject.toml
	$(call dev_venv,$(OLDEST_PYTHON),$(OLDEST_VENV))

test-oldest: $(OLDEST_STAMP) $(POPOTO1_STAMP)
	$(OLDEST_VENV)/bin/python --version
	$(OLDEST_VENV)/bin/python -m pytest -m "not slow" -p no:cacheprovider -q $(PYTEST_ARGS)
endif

lint: $(STAMP) lint-lua
	$(BIN)/ruff check popoto tasks workers ops tests conftest.py
	$(BIN)/mypy --strict popoto
	$(BIN)/lint-imports --no-cache

# the server-side scripts (popoto/lua), configured by .luacheckrc
lint-lua:
	@command -v luacheck >/dev/null || { echo "luacheck not found: apt-get install lua-check"; exit 1; }
	luacheck -q --no-color popoto/lua

# A peer whose install fails is not fatal here: the run reports it as MISSING, loudly.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]' && touch $@ || \
		echo "WARNING: could not install the bench extra; its peers will be reported MISSING"

$(POPOTO1_STAMP):
	( $(PYTHON) -m venv $(POPOTO1_VENV) && \
	  $(POPOTO1_VENV)/bin/pip install -q --upgrade pip && \
	  $(POPOTO1_VENV)/bin/pip install -q 'popoto==1.10.1' hiredis && touch $@ ) || \
		echo "WARNING: could not create $(POPOTO1_VENV); popoto-1.10.1 will be reported MISSING"

# BENCH_ARGS, e.g. --million (1M stored objects, 2M for the range page) or --no-cluster
bench: $(STAMP) $(BENCH_STAMP) $(POPOTO1_STAMP)
	$(SERVER) $(BIN)/python -m popoto.ops.bench --popoto1-python $(CURDIR)/$(POPOTO1_VENV)/bin/python $(BENCH_ARGS)

# honcho gives the web process PORT=5000: the app on http://127.0.0.1:5000/, the dashboard
# on http://127.0.0.1:5000/ops/ (read-only unless POPOTO_DASHBOARD_TOKEN is set)
run: $(STAMP)
	@if [ -n "$$POPOTO_DASHBOARD_TOKEN" ]; then mode="actions need the token"; \
	  else mode="read-only: set POPOTO_DASHBOARD_TOKEN for actions"; fi; \
	  echo "make run: web app http://127.0.0.1:5000/  dashboard http://127.0.0.1:5000/ops/ ($$mode)"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(SERVER) $(BIN)/honcho start

clean:
	rm -rf $(VENV) $(POPOTO1_VENV) $(OLDEST_VENV) .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
