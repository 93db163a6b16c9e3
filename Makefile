# Usage metering & billing pipeline. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
CODE := schemas billing metering tests bench

.PHONY: help install system-deps test test-faults lint demo bench stack-up stack-down stack-status contract schemas clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## Create .venv/ with the `metering` and `billing` commands

system-deps: ## Install Java 17, Maven, redis-server, Chromium and chromium-driver if missing (apt-get; needs root or sudo)
	@./deploy/install-system-deps.sh

stack-up: install system-deps ## Start local Kafka (KRaft) + Redis and create the topics
	$(BIN)/metering stack up

stack-down: install ## Stop the local stack (data in var/ is kept)
	$(BIN)/metering stack down

stack-status: install ## Show the local stack
	$(BIN)/metering stack status

test: install system-deps ## Run the whole suite against real Kafka and Redis (started if needed)
	$(BIN)/pytest

test-faults: install system-deps ## Only the reliability suite (also part of `test`); METERING_FAULT_SEED=N reruns seed N
	$(BIN)/pytest tests/e2e/test_reliability.py

lint: install ## ruff + mypy
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy $(CODE)

contract: install ## Regenerate the generated contract: JSON Schemas, docs/openapi.json, GENERATED blocks in *.md
	$(PY) -m metering.contract

schemas: contract ## The same as `contract`

demo: install system-deps ## Start the stack and drive a month of sample traffic through it
	$(BIN)/metering demo

bench: install system-deps ## Benchmarks: prints events/s and latency percentiles, writes bench/results.json
	$(BIN)/metering stack up >/dev/null
	$(PY) -m bench.report

clean: ## Remove var/ (all local data) and .venv/
	-$(BIN)/metering stack down
	rm -rf var $(VENV)
