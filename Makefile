# The README's two commands: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SCALE ?= 0.1
MONTHS ?= 1
PYTEST_ARGS ?=

.PHONY: install demo test bench dev validate clean

$(BIN)/caredata: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(BIN)/caredata

install: $(BIN)/caredata

demo: install
	$(BIN)/caredata demo --out demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m pipelines.bench --scale $(SCALE) --months $(MONTHS) --out bench-out

dev: install
	DAGSTER_HOME=$(CURDIR)/.dagster_home CAREDATA_DEMO_MODE=1 \
	CAREDATA_LANDING=$(CURDIR)/demo/landing CAREDATA_WAREHOUSE=$(CURDIR)/demo/warehouse \
	CAREDATA_PUBLISH=$(CURDIR)/demo/publish \
	sh -c 'mkdir -p .dagster_home && $(BIN)/dagster dev -w workspace.yaml'

validate: install
	$(BIN)/dagster definitions validate -w workspace.yaml

clean:
	rm -rf $(VENV) demo bench-out .dagster_home
