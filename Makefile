# Set-up and everyday commands. `make run` and `make test` work on a fresh Debian machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the tests run for real: the Prometheus server with promtool, and node_exporter.
TEST_PACKAGES := prometheus prometheus-node-exporter
TEST_TOOLS := /usr/bin/prometheus /usr/bin/promtool /usr/bin/prometheus-node-exporter

.PHONY: run test lint install install-test test-tools bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench]'

# Installs the Debian packages when a tool is missing; as root only, because apt-get needs it.
test-tools:
	@missing=0; for tool in $(TEST_TOOLS); do [ -x $$tool ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_PACKAGES); \
		else \
			echo "missing $(TEST_TOOLS): run 'sudo apt-get install $(TEST_PACKAGES)'" >&2; exit 1; \
		fi; \
	fi

# Runs the embedded default: sample workers, merged on http://localhost:9090/metrics.
run: install
	$(BIN)/python -m lsif_agg --workers $${WORKERS:-3}

lint: install-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

test: install-test test-tools lint
	$(BIN)/pytest -q

# The merge alone; the whole scrape beside a real Prometheus is benchmarks/bench_scrape.py.
bench: install-test test-tools
	$(BIN)/python benchmarks/bench_merge.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
