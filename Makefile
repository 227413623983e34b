# The verbs people type. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test fuzz lint format bench bench-quick clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The Python client (its own package, httpx only): `loyalty import --url` and the tests use it.
	$(BIN)/pip install --quiet -e clients/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: set up and serve the API on http://127.0.0.1:9000 with SQLite in ./data
run: $(STAMP)
	$(BIN)/loyalty serve

## test: set up and run the whole suite on SQLite and PostgreSQL, then lint
# Two groups at once, the tests on PostgreSQL and the others: each spends most of its time
# waiting on the servers it starts, so the two share the cores well. The PostgreSQL group's
# report follows the other's. The Medusa SDK is installed first, for both groups.
test: $(STAMP)
	@if command -v npm >/dev/null && [ ! -d tests/medusa/node_modules ]; then \
		cd tests/medusa && npm ci --no-audit --no-fund --silent; fi
	@log=$$(mktemp); status=0; \
	$(BIN)/pytest -q -k postgresql > $$log 2>&1 & group=$$!; \
	$(BIN)/pytest -q -k "not postgresql" || status=$$?; \
	wait $$group || status=$$?; \
	echo "--- the tests on PostgreSQL:"; cat $$log; rm -f $$log; exit $$status
	$(MAKE) lint

## fuzz: schemathesis over every operation, 1000 random cases each, on SQLite and PostgreSQL
fuzz: $(STAMP)
	LOYALTY_FUZZ_EXAMPLES=1000 $(BIN)/pytest -q -s tests/test_fuzz.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench clients
	$(BIN)/ruff format --check src tests bench clients
	$(BIN)/mypy
	cd bench && ../$(BIN)/mypy --strict --explicit-package-bases .

format: $(STAMP)
	$(BIN)/ruff format src tests bench clients
	$(BIN)/ruff check --fix src tests bench clients

## bench: set up and measure the service against its raw limit on both databases (bench/README.md)
bench: $(STAMP)
	$(BIN)/python bench/run.py

## bench-quick: a subset of `make bench` of a few minutes per database (no S5; S7 on 100,000 adjustments; S8)
bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
