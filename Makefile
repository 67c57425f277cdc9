# The two commands that matter on a fresh machine:
#   make demo   installs into .venv and runs the whole story against the built-in simulator
#   make test   installs into .venv (with test extras), makes sure redis-server exists, runs all tests
#   make unit   the tests that need no redis-server (fakeredis): no apt-get, no root
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test unit install install-test install-unit lock redis-server rabbitmq bench soak

# Every install comes from requirements/*.txt (pinned, with hashes): a fresh clone runs
# what CI ran. `make lock` regenerates them from pyproject.toml (see requirements/README.md).
PIP_VERSION := 26.3
PIP_INSTALL := $(BIN)/pip install --quiet --require-hashes --no-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==$(PIP_VERSION)

install: $(VENV)/.run-deps

install-test: install-unit redis-server

install-unit: $(VENV)/.test-deps

# pip runs again only when a lock file changes
$(VENV)/.run-deps: requirements/build.txt requirements/run.txt | $(BIN)/python
	$(PIP_INSTALL) -r requirements/build.txt -r requirements/run.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.test-deps: requirements/build.txt requirements/test.txt | $(BIN)/python
	$(PIP_INSTALL) -r requirements/build.txt -r requirements/test.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@ $(VENV)/.run-deps

COMPILE := $(BIN)/pip-compile --quiet --strip-extras --generate-hashes --allow-unsafe --no-emit-index-url --no-emit-find-links

lock: $(BIN)/python
	$(BIN)/pip install --quiet pip-tools
	$(COMPILE) --build-deps-for editable --only-build-deps -o requirements/build.txt pyproject.toml
	$(COMPILE) -o requirements/run.txt pyproject.toml
	$(COMPILE) --extra test -o requirements/test.txt pyproject.toml

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
	$(BIN)/pytest -n 3 -m "not integration"

# Figures of docs/performance.md (about 10 minutes; redis-server as for the tests)
bench: install-test
	$(BIN)/python bench/pipeline_throughput.py
	$(BIN)/python bench/send_steps.py
	$(BIN)/python bench/tracking_scale.py
	$(BIN)/python bench/rate_limit.py

# The soak at full size: every fault scenario, one line each, then sends under a flaky
# provider in waves, one line; both run even if the first fails (see docs/reliability.md)
soak: install-test rabbitmq
	$(BIN)/python bench/soak.py; status=$$?; $(BIN)/python bench/fault_soak.py && exit $$status
