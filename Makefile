# The two commands: `make demo` and `make test`. Each bootstraps what it needs from nothing:
# a virtualenv with pinned packages, and the CDK CLI from package-lock.json.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
export CDK_DISABLE_CLI_TELEMETRY := true
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint typecheck unit integration e2e infra bench bench-etl bench-train bench-drift bench-serve dev-train mlflow-ui synth \
        local-up local-down \
        local-status clean help health backup-db restore-db scale-serving replay

help:
	@echo "make demo   - run the pipeline end to end on the local cloud (no AWS account, no Docker)"
	@echo "make test   - lint, type-check and run every test"
	@echo "make bench  - the benchmarks (bench-etl, ...)"
	@echo "make synth  - synthesize the CDK app (cdk.out/)"

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml layers/pricepipe/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -e layers/pricepipe -e .
	touch $@

# Swagger UI's files for the API's offline /docs page (pricepipe.serving.docs): from the pinned
# swagger-ui-dist into the package, so the package layer the stacks build carries them.
SWAGGER_UI := layers/pricepipe/pricepipe/serving/swagger_ui
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	mkdir -p $(SWAGGER_UI)
	cp node_modules/swagger-ui-dist/swagger-ui-bundle.js node_modules/swagger-ui-dist/swagger-ui.css \
	   node_modules/swagger-ui-dist/LICENSE node_modules/swagger-ui-dist/NOTICE $(SWAGGER_UI)/
	touch $@

demo: $(STAMP) $(NODE_STAMP)
	$(BIN)/pipectl demo

local-up: $(STAMP) $(NODE_STAMP)
	$(BIN)/pipectl local up

local-down: $(STAMP)
	$(BIN)/pipectl local down

local-status: $(STAMP)
	$(BIN)/pipectl local status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) $(NODE_STAMP) lint typecheck
	$(BIN)/pytest

unit integration e2e infra: $(STAMP) $(NODE_STAMP)
	$(BIN)/pytest tests/$@

bench: bench-etl bench-train bench-drift bench-serve bench-writer

bench-etl: $(STAMP)
	$(BIN)/python -m benchmarks.bench_etl

bench-train: $(STAMP)
	$(BIN)/python -m benchmarks.bench_train

bench-drift: $(STAMP)
	$(BIN)/python -m benchmarks.bench_drift

bench-serve: $(STAMP)
	$(BIN)/python -m benchmarks.bench_serve

.PHONY: score bench-score
score: $(STAMP)
	@test -n "$(input)" || (echo "usage: make score input=<s3://... | prefix | local files> [version=N|alias] [interval=0.8]" && exit 2)
	$(BIN)/pipectl score --input $(input) $(if $(version),--version $(version)) $(if $(interval),--interval $(interval)) --target $(TARGET)

bench-score: $(STAMP)
	$(BIN)/python -m benchmarks.bench_score

.PHONY: bench-intervals
bench-intervals: $(STAMP)
	$(BIN)/python -m benchmarks.bench_intervals

dev-train: $(STAMP) $(NODE_STAMP)
	$(BIN)/pipectl local up
	$(BIN)/pipectl train

mlflow-ui: $(STAMP)
	$(BIN)/pipectl mlflow-ui

synth: $(STAMP) $(NODE_STAMP)
	npx cdk synth --quiet

clean:
	rm -rf $(VENV) node_modules cdk.out build .pytest_cache .mypy_cache .ruff_cache

# The seed spec's operations, on the local cloud (TARGET=aws for the deployed stack)
TARGET ?= local
health: $(STAMP)
	$(BIN)/pipectl health --target $(TARGET)

logs-%: $(STAMP)
	$(BIN)/pipectl logs $* --target $(TARGET)

backup-db: $(STAMP)
	$(BIN)/pipectl backup-db --target $(TARGET)

restore-db: $(STAMP)
	@test -n "$(file)" || (echo "usage: make restore-db file=backups/<dump>" && exit 2)
	$(BIN)/pipectl restore-db $(file) --target $(TARGET)

scale-serving: $(STAMP)
	@test -n "$(n)" || (echo "usage: make scale-serving n=<containers>" && exit 2)
	$(BIN)/pipectl scale-serving $(n) --target $(TARGET)

replay: $(STAMP)
	$(BIN)/pipectl replay --weeks $(or $(weeks),4)

constraints: $(STAMP)
	( echo "# Transitive pins for requirements-dev.txt (pip freeze of a fresh install). Regenerate with"; \
	  echo "# \`make constraints\` after changing a requirements file."; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^-e\|^#\|@ file' ) > constraints.txt

.PHONY: bench-writer
bench-writer: $(STAMP)
	$(BIN)/python -m benchmarks.bench_writer
