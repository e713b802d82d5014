# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint reliability bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tally serve

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

# The deep tier of the reliability battery (tests/reliability/README.md): the slow tests, and the
# battery's fast tests with more seeds and examples. PostgreSQL cases need TALLY_TEST_DATABASE_URL.
reliability: $(STAMP)
	TALLY_RELIABILITY=deep $(BIN)/pytest -m "slow or reliability" -p no:randomly

bench: $(STAMP)
	for script in bench/*.py; do [ $$script = bench/common.py ] || $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
