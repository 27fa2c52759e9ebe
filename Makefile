# Everything runs from a project virtualenv; the first target that needs it creates it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check

# every install is held to constraints.txt (make lock), so a run records exactly what ran
CONSTRAINTS := -c constraints.txt

.PHONY: demo test soak bench bench-live lint format lab lock services-up services-down clean kafka-jars

# the (Kafka broker, Redis server) pairs every integration test body runs on
FERRY_TEST_STACKS ?= tansu/redis,tansu/valkey,apache:3.7/redis,apache:3.7/valkey,apache:4.x/redis
export FERRY_TEST_STACKS

# the core: mirror, validate, DualWriter, services and the CLI verbs that drive them
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(CONSTRAINTS) -e .
	touch $@

# + the runbook (papermill, Great Expectations, charts): ferry run, ferry demo
$(VENV)/.runbook: $(VENV)/.installed
	$(PIP) install $(CONSTRAINTS) -e '.[runbook]'
	touch $@

# + JupyterLab
$(VENV)/.lab: $(VENV)/.runbook
	$(PIP) install $(CONSTRAINTS) -e '.[lab]'
	touch $@

# + test and lint tools (includes runbook and lab: the notebooks are tested too)
$(VENV)/.dev: $(VENV)/.lab
	$(PIP) install $(CONSTRAINTS) -e '.[dev]'
	touch $@

# constraints.txt from the virtualenv: the exact version of everything ferry[dev] needs
lock: $(VENV)/.dev
	$(PY) scripts/lock.py

demo: $(VENV)/.runbook
	$(VENV)/bin/ferry demo

test: $(VENV)/.dev kafka-jars
	bash scripts/ensure-system-packages
	$(PY) -m pytest

# Apache Kafka's broker jars (Maven Central, cached per version in ~/.cache/ferry/kafka)
kafka-jars: $(VENV)/.installed
	$(PY) -m ferry.services.apache_kafka 3.7 4.x

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

# JupyterLab on the runbook, against the embedded services (started and seeded if needed;
# the ones it started are stopped when it exits or is interrupted; --allow-root as root)
lab: $(VENV)/.lab
	$(VENV)/bin/ferry lab

services-up: $(VENV)/.installed
	$(VENV)/bin/ferry services up

services-down: $(VENV)/.installed
	$(VENV)/bin/ferry services down

clean:
	rm -rf .ferry bench/results
