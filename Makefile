# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates the virtual environment itself on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo ui test lint format bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed  ## run both nightly jobs end to end on the embedded defaults
	$(BIN)/partners-dagster demo

ui: $(BIN)/.installed  ## the demo's setup, then the Dagster UI on it
	$(BIN)/partners-dagster ui

test: $(BIN)/.installed  ## lint, then every test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/partners-dagster bench --scale $(or $(SCALE),small)

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .partners_dagster .pytest_cache .ruff_cache
