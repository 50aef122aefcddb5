# Two commands on a machine with only Python 3.11+:
#   make dev    set up .venv with what running needs and run `waitpoint dev` (worker on
#               .waitpoint/engine.db, tasks in tasks/) on port 8030, or another: make dev PORT=8031
#   make test   add the test toolchain (the dev extras), then lint, type-check, check the
#               import layers (scripts/check_imports.py) and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: dev test lint clean

# the project (editable) and its runtime dependencies: what `pip install waitpoint` gets
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# plus the test toolchain: pytest, ruff, mypy, schemathesis, Playwright, asyncpg
$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

dev: $(BIN)/.installed
	$(BIN)/waitpoint dev $(if $(PORT),--port $(PORT))

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check engine tasks tests examples benchmarks scripts
	$(BIN)/ruff format --check engine tasks tests examples benchmarks scripts
	$(BIN)/mypy
	$(BIN)/python scripts/check_imports.py

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .waitpoint .pytest_cache .mypy_cache .ruff_cache
