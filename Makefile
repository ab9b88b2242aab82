# Everything a fresh machine needs comes from here: only python3 (3.11+) and make are assumed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SRC    := protocol syncd tests bench

.PHONY: venv lint format test test-long bench run fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format $(SRC)
	$(BIN)/ruff check --fix $(SRC)

test: lint
	$(BIN)/pytest

test-long: venv
	$(BIN)/pytest -m slow --timeout 3600

# Every bench (peers included) -> one JSON document in bench/results/, then its report and
# plots beside it (bench/README.md). BENCH_ARGS=--full for the issue's sizes.
bench: venv
	$(BIN)/python -m bench $(BENCH_ARGS); status=$$?; \
	$(BIN)/python -m bench.report --latest && exit $$status

fuzz: venv
	$(BIN)/python -m protocol.fuzz

# The daemon and the ingest role, with a source CRM database followed as org `demo`.
run: venv
	$(BIN)/syncd-ingest demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
