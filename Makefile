# Everything runs from a project virtualenv; the first target that needs it creates it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check

.PHONY: demo test soak bench bench-live lint format lab services-up services-down clean kafka-jars

# the (Kafka broker, Redis server) pairs every integration test body runs on
FERRY_TEST_STACKS ?= tansu/redis,tansu/valkey,apache:3.7/redis,apache:3.7/valkey,apache:4.x/redis
export FERRY_TEST_STACKS

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PIP) install -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/ferry demo

test: $(VENV)/.dev kafka-jars
	bash scripts/ensure-system-packages
	$(PY) -m pytest

# Apache Kafka's broker jars (Maven Central, cached per version in ~/.cache/ferry/kafka)
kafka-jars: $(VENV)/.installed
	$(PY) -m ferry.apache_kafka 3.7 4.x

soak: $(VENV)/.dev
	bash scripts/ensure-system-packages
	$(PY) -m pytest tests/soak -m soak -s

bench: $(VENV)/.dev
	bash scripts/ensure-system-packages
	$(PY) bench/backfill_bench.py

bench-live: $(VENV)/.dev
	$(PY) bench/live_bench.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check lib tests bench conftest.py
	$(VENV)/bin/ruff format --check lib tests bench conftest.py

format: $(VENV)/.dev
	$(VENV)/bin/ruff check --fix lib tests bench
	$(VENV)/bin/ruff format lib tests bench

# JupyterLab on the runbook, against the embedded services (started and seeded if needed)
lab: $(VENV)/.installed
	$(VENV)/bin/ferry services status >/dev/null 2>&1 || $(VENV)/bin/ferry services up
	$(VENV)/bin/ferry seed-demo
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

services-up: $(VENV)/.installed
	$(VENV)/bin/ferry services up

services-down: $(VENV)/.installed
	$(VENV)/bin/ferry services down

clean:
	rm -rf .ferry bench/results
