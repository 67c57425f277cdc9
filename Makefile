# The two commands that matter on a fresh machine:
#   make demo   installs into .venv and runs the whole story against the built-in simulator
#   make test   installs into .venv (with test extras), makes sure redis-server exists, runs all tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test redis-server bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python redis-server
	$(BIN)/pip install --quiet -e '.[test]'

# Tests start their own redis-server; the demo starts one when no Redis answers.
redis-server:
	@command -v redis-server >/dev/null || { echo "redis-server not found: installing it with apt-get"; \
		(apt-get update -qq && apt-get install -y -qq redis-server) || { echo "cannot install redis-server" >&2; exit 1; }; }

demo: install redis-server
	$(BIN)/mobyt demo

test: install-test
	$(BIN)/pytest

# Figures of the README's performance section (about 10 minutes; redis-server as for the tests)
bench: install-test
	$(BIN)/python bench/pipeline_throughput.py
	$(BIN)/python bench/send_steps.py
	$(BIN)/python bench/tracking_scale.py
	$(BIN)/python bench/rate_limit.py
