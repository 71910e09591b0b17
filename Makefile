# Two commands on a fresh machine: `make run` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed

.PHONY: run test test-js lint format bench chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME): requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(DEV): requirements.txt requirements-dev.txt $(RUNTIME)
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(RUNTIME)
	$(BIN)/python bin/run.py

# Two passes (tests/README.md): TEST_WORKERS pytest-xdist workers for everything but the tests
# marked serial, then those alone in one process. Either pass may select nothing for a
# PYTEST_ARGS of one file (pytest's exit code 5); TEST_WORKERS=0 runs the first pass in-process.
# worksteal: an idle worker takes tests queued on a busy one (with `load`, one worker ran the
# last 3.6 minutes of a pass alone: 504 s against 362 s, tests/README.md).
TEST_WORKERS ?= 4
test: $(DEV) test-js
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest --serial-pass -p no:xdist $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The suites of tests/support/shapes.py (marker shapes) again on the two other presence store
# shapes: a Redis Cluster of 3 primaries, then 3 independent primaries. Each xdist worker
# starts its own (tests/README.md, "The store shapes").
.PHONY: test-shapes
SHAPE_WORKERS ?= 4
SHAPE_SUITES = $(shell $(BIN)/python -c "from tests.support.shapes import SHAPE_SUITES; print(*SHAPE_SUITES)")
test-shapes: $(DEV)
	$(BIN)/python -m pytest -n $(SHAPE_WORKERS) --dist worksteal -m shapes --presence-store=cluster $(SHAPE_SUITES) $(PYTEST_ARGS)
	$(BIN)/python -m pytest -n $(SHAPE_WORKERS) --dist worksteal -m shapes --presence-store=shards $(SHAPE_SUITES) $(PYTEST_ARGS)

# The browser client's unit tests (node's own runner, no packages). Node.js is needed only here.
test-js:
	@command -v node >/dev/null || { echo "make test-js: 'node' not found; install Node.js >= 18 (apt-get install nodejs)" >&2; exit 1; }
	cd presence/static/presence && node --test

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo
	$(BIN)/python bin/check_sizes.py

format: $(DEV)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The chaos suite (docs/reliability.md): one scenario at a time on real processes, ~1 min each;
# CHAOS_CLIENTS sets the number of WebSocket clients (default 300). Rewrites the table there.
CHAOS_CLIENTS ?= 300
chaos: $(DEV)
	CHAOS_CLIENTS=$(CHAOS_CLIENTS) timeout 900 $(BIN)/python -m pytest -m chaos tests/chaos -s $(PYTEST_ARGS)

bench: $(DEV)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var/*.sqlite3* var/redis var/redis.url var/celerybeat-schedule* var/prometheus
