# The two commands that matter on a fresh machine:
#   make demo   installs into .venv and runs the whole story against the built-in simulator
#   make test   installs into .venv (with test extras), makes sure redis-server exists, runs all tests
#   make unit   the tests that need no redis-server (fakeredis): no apt-get, no root
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test unit install install-test install-unit redis-server rabbitmq bench soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: install-unit redis-server

install-unit: $(VENV)/.test-deps

# pip runs again only when pyproject.toml changes
$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Tests start their own redis-server; the demo starts one when no Redis answers.
redis-server:
	@command -v redis-server >/dev/null || { echo "redis-server not found: installing it with apt-get"; \
		(apt-get update -qq && apt-get install -y -qq redis-server) || { echo "cannot install redis-server" >&2; exit 1; }; }

# The RabbitMQ broker tests need a running rabbitmq-server: installed with apt-get if
# missing, started if stopped.
rabbitmq:
	@command -v rabbitmq-server >/dev/null || { echo "rabbitmq-server not found: installing it with apt-get"; \
		(apt-get update -qq && apt-get install -y -qq rabbitmq-server) || { echo "cannot install rabbitmq-server" >&2; exit 1; }; }
	@rabbitmqctl -q status >/dev/null 2>&1 || { echo "starting rabbitmq-server"; \
		(service rabbitmq-server start >/dev/null 2>&1 || rabbitmq-server -detached) && \
		timeout 120 rabbitmqctl -q await_startup >/dev/null 2>&1 || { echo "rabbitmq-server did not start" >&2; exit 1; }; }

demo: install redis-server
	$(BIN)/mobyt demo

# Three test processes, a test file each at a time: most integration tests wait on
# workers and the simulator, so they share two CPUs well.
test: install-test rabbitmq
	$(BIN)/pytest -n 3 --dist loadfile

# Store, inbox, opt-outs, credits, rate limit, metrics... on fakeredis; a connection to any
# Redis server fails the test (tests/conftest.py). The integration tier runs in `make test`.
unit: install-unit
	$(BIN)/pytest -m "not integration"

# Figures of the README's performance section (about 10 minutes; redis-server as for the tests)
bench: install-test
	$(BIN)/python bench/pipeline_throughput.py
	$(BIN)/python bench/send_steps.py
	$(BIN)/python bench/tracking_scale.py
	$(BIN)/python bench/rate_limit.py

# The soak at full size: every fault scenario, one line each, then sends under a flaky
# provider in waves, one line; both run even if the first fails (see README, reliability)
soak: install-test rabbitmq
	$(BIN)/python bench/soak.py; status=$$?; $(BIN)/python bench/fault_soak.py && exit $$status
