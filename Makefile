# The two commands that matter on a fresh machine:
#   make demo   installs into .venv and runs the whole story against the built-in simulator
#   make test   installs into .venv (with test extras), makes sure redis-server exists, runs all tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test redis-server rabbitmq bench soak

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

# The RabbitMQ broker tests use the local server when it is installed (skipped otherwise).
rabbitmq:
	@if command -v rabbitmq-server >/dev/null && ! rabbitmqctl -q status >/dev/null 2>&1; then \
		echo "starting rabbitmq-server"; \
		(service rabbitmq-server start >/dev/null 2>&1 || rabbitmq-server -detached) && \
		timeout 90 rabbitmqctl -q await_startup >/dev/null 2>&1 || echo "rabbitmq-server did not start: its tests are skipped"; \
	fi

demo: install redis-server
	$(BIN)/mobyt demo

test: install-test rabbitmq
	$(BIN)/pytest

# Figures of the README's performance section (about 6 minutes; redis-server as for the tests)
bench: install-test
	$(BIN)/python bench/pipeline_throughput.py
	$(BIN)/python bench/send_steps.py
	$(BIN)/python bench/tracking_scale.py
	$(BIN)/python bench/rate_limit.py

# The soak at full size: every fault scenario, one line each (see README, reliability)
soak: install-test rabbitmq
	$(BIN)/python bench/soak.py
