# intentflow — every target sets itself up: a fresh machine needs only Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install up demo test test-unit test-integration test-e2e lint format bench bench-steps chaos migrate compose-up compose-down logs clean

help:
	@echo "make up        run the whole system on embedded servers (intentflow up)"
	@echo "make test      set up and run every test tier (unit, integration, e2e)"
	@echo "make lint      ruff, mypy, import-linter"
	@echo "make bench     benchmarks; prints one JSON object (bench-results/latest.json)"
	@echo "make bench-steps  where a batch's time goes at 1,000 signals/s, step by step (JSON)"
	@echo "make chaos     the full chaos suite with figures"
	@echo "make migrate   apply database migrations"
	@echo "make compose-up / compose-down / logs   the docker compose deployment"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/intentflow up

demo: $(STAMP)
	$(BIN)/intentflow up --demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: $(STAMP)
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared services tests
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	@$(BIN)/python -m tests.bench.run

bench-steps: $(STAMP)
	@$(BIN)/python -m tests.bench.steps

chaos: $(STAMP)
	@$(BIN)/python -m tests.bench.chaos

migrate: $(STAMP)
	$(BIN)/intentflow migrate

compose-up:
	docker compose up --build -d

compose-down:
	docker compose down

logs:
	docker compose logs -f --tail=100

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
