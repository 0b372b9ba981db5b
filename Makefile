# The README's two commands: `make demo` and `make test`; `make test-fast` and `make lint` for the
# developers' loop.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SCALE ?= 0.1
MONTHS ?= 1
PYTEST_ARGS ?=

.PHONY: install demo test test-spark test-fast lint bench bench-hes dev validate clean ops-test ui-test deploy-check

$(BIN)/caredata: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(BIN)/caredata

install: $(BIN)/caredata

demo: install
	$(BIN)/caredata demo --out demo

# Every test but those that need Spark, on DuckDB (the default engine), in two workers (pytest-xdist),
# a test file each at a time (module fixtures are one generated run per file): TEST_WORKERS=0 runs
# them in this process. `make test-spark` runs the rest; .ci/run runs both.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
test: install
	$(BIN)/python -m pytest -m "not spark" $(XDIST) $(PYTEST_ARGS)

# Everything but the slow kinds (markers in pyproject.toml): the whole pipeline end to end (e2e),
# PostgreSQL and the daemon (ops), the UI in Chromium (ui), Spark (spark).
test-fast: install
	$(BIN)/python -m pytest -m "not e2e and not ops and not ui and not spark" $(PYTEST_ARGS)

# ruff, configured in pyproject.toml; .ci/run runs it before the tests.
lint: install
	$(BIN)/ruff check .

# Spark (local[2], one session per process): the tests marked spark (each plan and construct on
# both engines, and tests/test_engine_parity.py: a generated landing zone run by both engines,
# every published dataset, warehouse table and the ledger equal row for row), then the
# end-to-end truth tests (generator's truth, the artificial HES sample) with every heavy step on
# Spark instead of DuckDB (`make test` runs them on DuckDB).
test-spark: install
	$(BIN)/python -m pytest -m spark $(PYTEST_ARGS)
	CAREDATA_ENGINE=spark $(BIN)/python -m pytest -m e2e tests/test_end_to_end.py tests/test_hes_end_to_end.py $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m pipelines.bench --scale $(SCALE) --months $(MONTHS) --out bench-out

bench-spark: install  # the same, the relational steps on Spark local[2] (docs/scaling.md)
	$(BIN)/python -m pipelines.bench --scale $(SCALE) --months $(MONTHS) --out bench-out --engine spark

# The cost of history: a HES extract of HES_YEARS years, HES_EPISODES episodes a month (the
# scale knob), beside a small generated month (HES_SCALE) whose GP extracts the HES patients
# link to; every stage runs over every month of the history (docs/performance.md).
HES_YEARS ?= 10
HES_EPISODES ?= 1000
HES_SCALE ?= 0.002
bench-hes: install
	$(BIN)/python -m pipelines.bench --scale $(HES_SCALE) --months 1 --hes-years $(HES_YEARS) \
	  --hes-episodes $(HES_EPISODES) --out bench-out

# The UI on the demo: the same Dagster home `caredata demo` recorded its runs in.
dev: install
	DAGSTER_HOME=$(CURDIR)/demo/.dagster_home CAREDATA_DEMO_MODE=1 \
	CAREDATA_LANDING=$(CURDIR)/demo/landing CAREDATA_WAREHOUSE=$(CURDIR)/demo/warehouse \
	CAREDATA_PUBLISH=$(CURDIR)/demo/publish \
	sh -c 'mkdir -p demo/.dagster_home && $(BIN)/dagster dev -w workspace.yaml'

validate: install
	$(BIN)/dagster definitions validate -w workspace.yaml

clean:
	rm -rf $(VENV) demo bench-out .dagster_home

# Operations: the production instance (deploy/dagster.yaml) on a throwaway PostgreSQL, the
# queue limits, schedule, sensors, alerts, a daemon-run backfill (make test runs these too).
ops-test: install
	$(BIN)/python -m pytest tests/test_ops.py $(PYTEST_ARGS)

# The Dagster UI in headless Chromium; screenshots in test-artifacts/.
ui-test: install
	$(BIN)/python -m pytest tests/test_ui.py $(PYTEST_ARGS)

# deploy/dagster.yaml parses against this Dagster's instance schema (no database needed).
deploy-check: install
	@tmp=$$(mktemp -d) && cp deploy/dagster.yaml $$tmp/ && \
	DAGSTER_PG_USERNAME=u DAGSTER_PG_PASSWORD=p DAGSTER_PG_HOST=localhost DAGSTER_PG_DB=d DAGSTER_PG_PORT=5432 \
	$(BIN)/python -c "import sys; \
	from dagster._core.instance.config import dagster_instance_config as c; c(sys.argv[1]); \
	print('deploy/dagster.yaml: valid')" $$tmp; rc=$$?; rm -rf $$tmp; exit $$rc
