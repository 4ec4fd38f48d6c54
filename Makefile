# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates the virtual environment itself on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo ui test test-fast test-services lint format bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed  ## run both nightly jobs end to end on the embedded defaults
	$(BIN)/partners-dagster demo

ui: $(BIN)/.installed  ## the demo's setup, then the Dagster UI on it
	$(BIN)/partners-dagster ui

# Workers for `make test` (pytest-xdist): one more than the cores, since many tests wait on
# subprocesses and servers (on 2 cores: 5 min 49 s with 3, 6 min 26 s with 2). WORKERS=0 runs
# in one process.
WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
# The fast layer: the business rules, the API's records, the steps and the Sidekiq payloads.
FAST_TESTS := $(addprefix partners_dagster_tests/,test_rules.py test_partners_api_records.py \
	test_steps.py test_sidekiq_payload.py)

test: $(BIN)/.installed test-services  ## lint, then every test, one worker per core
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile

test-fast: $(BIN)/.installed  ## the rules, records, steps and payloads tests: seconds
	$(BIN)/python -m pytest -q $(FAST_TESTS)

test-services:  ## install Redis, Ruby's Sidekiq and compose for the tests when missing and allowed
	@bash scripts/ensure_test_services.sh

bench: $(BIN)/.installed
	$(BIN)/partners-dagster bench --scale $(or $(SCALE),small)

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .partners_dagster .pytest_cache .ruff_cache
