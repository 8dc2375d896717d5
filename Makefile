# broker-net: every command a developer or CI needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint format typecheck bench bench-async broker browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet -e '.[dev]'  # the build backend's notes on editable installs are noise here
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its dev extra.

broker: ## Make sure the local RabbitMQ (with its management API) is up.
	@bash scripts/ensure-broker.sh

browser: ## Make sure Debian's chromium and chromedriver are installed (the dashboard tests drive them).
	@bash scripts/ensure-browser.sh

demo: $(STAMP) ## The main job: a federated run end to end (in memory if no broker is reachable; DASHBOARD=1: with the dashboard).
	@if bash scripts/ensure-broker.sh --quiet; then \
		$(BIN)/python -m simulation.demo $(if $(DASHBOARD),--dashboard); \
	else \
		echo "No RabbitMQ broker can be reached or started here: running the same story as a simulation on the in-memory transport."; \
		$(BIN)/python -m simulation.demo --simulate $(if $(DASHBOARD),--dashboard); \
	fi

test: $(STAMP) broker browser ## Install, make sure the broker and the browser are there, run the whole suite.
	$(BIN)/pytest

test-fast: $(STAMP) browser ## The suite without the broker tests.
	$(BIN)/pytest -m "not rabbitmq"

lint: $(STAMP) ## Format check, ruff, mypy, and the layer contracts of docs/architecture.md.
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider tests/test_architecture.py tests/test_exported_members.py

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP) broker ## Every benchmark, as ratios against a raw aio-pika baseline.
	$(BIN)/python -m bench.run

bench-async: $(STAMP) ## Wall-clock time to a target accuracy: asynchronous FedBuff vs synchronous FedAvg, one node 5x slower.
	$(BIN)/python -m bench.bench_async

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

.PHONY: compose-env compose-check compose-proof

compose-env: ## Write .env for docker-compose with fresh random passwords (never overwrites one).
	@bash scripts/compose-env.sh

compose-check: $(STAMP) broker ## The deployment tests: compose file, definitions, status, the compose services run locally.
	$(BIN)/pytest tests/deploy

compose-proof: $(STAMP) ## docker-compose.yml built and run in containers, a node killed mid-run (root; not part of `make test`).
	@bash scripts/compose-proof.sh

.PHONY: soak

soak: $(STAMP) broker ## Soak: rounds with 50 node agents while connections drop at random (SOAK_SECONDS, default 600).
	$(BIN)/python -m bench.soak
