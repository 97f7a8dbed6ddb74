# One task runner for developers, the README and CI.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The CPU build lying on this machine's disk; installed before demucs so pip never
# resolves torch itself (which would pull a multi-GB CUDA build).
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=
# Where the reliability suite writes its figures (JSON) before rendering docs/reliability.md.
RELIABILITY_FIGURES ?= build/reliability
# Which mutants `make mutation` runs (fnmatch patterns of mutmut's names; empty = all).
# CI runs the runtime's and the DLQ's (`consumer.* stemctl.*`); `make mutation` runs every one.
MUTANTS ?=
# Rule files and their promtool unit tests (infra/monitoring); promtool and the prometheus
# server come from Debian's `prometheus` package (2.42 on bookworm).
MONITORING := infra/monitoring
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help install test test-unit test-integration lint format typecheck schemas \
        contracts-check demo bench costs capacity cpu-path gpu-wheels gpu-check-smoke \
        reliability reliability-long monitoring-tools monitoring-check mutation ci clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml contracts/pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ./contracts -e '.[dev]'
	touch $@

install: $(STAMP) ## create .venv and install everything (pinned by constraints.txt)

test: install monitoring-tools ## the whole suite: unit + integration on the real emulators
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install ## only the tests that need no server
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

test-integration: install monitoring-tools ## only the tests on the Pub/Sub emulator and fake-gcs-server
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

lint: install ## ruff (lint, import order, formatting) and import-linter (the layers in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install ## mypy --strict on every package, bench and tests
	$(BIN)/mypy consumer stemctl infra devkit contracts/stem_contracts bench tests

schemas: install ## regenerate contracts/schemas from the models
	$(BIN)/python -m stem_contracts.schemas write contracts/schemas

contracts-check: ## stem-contracts alone in a fresh venv: its tests pass, torch/demucs absent
	rm -rf .venv-contracts
	$(PYTHON) -m venv .venv-contracts
	.venv-contracts/bin/python -m pip install -q -c constraints.txt ./contracts pytest pytest-timeout jsonschema
	cd /tmp && $(CURDIR)/.venv-contracts/bin/python -c "import importlib.util as u, sys; \
	  bad = [m for m in ('torch', 'demucs', 'consumer', 'infra') if u.find_spec(m)]; \
	  sys.exit(f'stem-contracts venv can import {bad}') if bad else print('contracts venv: torch, demucs, consumer, infra not importable')"
	.venv-contracts/bin/python -m pytest tests/contracts -m "not integration" -p no:cacheprovider -q

demo: install ## start the emulators, a worker, and separate a generated sample end to end
	$(BIN)/stemctl demo

bench: install ## the fleet against demucs.api.Separator, side by side (see bench/)
	$(BIN)/python -m bench $(BENCH_ARGS)

costs: install ## per-core CPU costs: decode, resample, MP3 -q 0-7 / FLAC / WAV encode, hashing (bench/results/costs.json)
	$(BIN)/python -m bench costs $(BENCH_ARGS)

capacity: install ## the capacity model: docs/capacity.md and docs/capacity.png from bench/measurements/ and bench/prices.toml
	$(BIN)/python -m bench capacity $(BENCH_ARGS)

cpu-path: install ## faster CPU forwards (bf16 autocast, TorchScript, ONNX Runtime, OpenVINO) against fp32, speed and SNR
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,cpu-path]'
	$(BIN)/python -m bench cpu-path $(BENCH_ARGS)

# The Python of the GPU machine that bench/gpu_check.sh will run on (its wheels must match).
GPU_PYTHON ?= 3.12
gpu-wheels: install ## bench/wheels/: the wheels bench/gpu_check.sh installs on a GPU machine without network
	rm -rf bench/wheels
	$(BIN)/python -m bench.gpu_wheels bench/wheels $(GPU_PYTHON)

gpu-check-smoke: install ## bench/gpu_check.sh --device cpu --smoke: the GPU check's plumbing, on this CPU
	PYTHON=$(BIN)/python GPU_CHECK_WHEELS=$(CURDIR)/.no-wheels bash bench/gpu_check.sh --device cpu --smoke

reliability: install ## chaos, resource, bad-input and security suite (CI-sized); rewrites its table in docs/reliability.md
	rm -rf $(RELIABILITY_FIGURES)/ci
	RELIABILITY_FIGURES=$(RELIABILITY_FIGURES)/ci $(BIN)/python -m pytest tests/chaos tests/reliability $(PYTEST_ARGS)
	$(BIN)/python -m tests.reliability.report $(RELIABILITY_FIGURES)/ci --section ci --out docs/reliability.md

reliability-long: install ## release check: 500-job chaos run, 1000-job soak, 10-minute track (~14 min); rewrites its table
	$(BIN)/python -m tests.reliability.long_run --jobs 500 --workers 3 --figures $(RELIABILITY_FIGURES)/long --out docs/reliability.md

mutation: install ## mutation testing of the pure core (mutmut); fails on a survivor not in tests/mutation/survivors.txt
	rm -rf build/mutation && mkdir -p build/mutation/contracts
	cp -r consumer stemctl devkit infra tests pyproject.toml build/mutation/
	cp -r contracts/schemas build/mutation/contracts/
	cp -r contracts/stem_contracts build/mutation/stem_contracts
	cd build/mutation && $(CURDIR)/$(BIN)/mutmut run --max-children 2 $(foreach m,$(MUTANTS),'$(m)') >/dev/null
	cd build/mutation && $(CURDIR)/$(BIN)/python $(CURDIR)/tests/mutation/check.py $(CURDIR)/$(BIN)/mutmut

monitoring-tools: ## promtool + prometheus from Debian's prometheus package, installed when absent
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null; then \
	  echo "monitoring-tools: $$(promtool --version 2>&1 | head -n 1)"; \
	else \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	fi

monitoring-check: monitoring-tools ## promtool: check the Prometheus config and rules, run the rules' unit tests
	promtool check config --syntax-only $(MONITORING)/prometheus.yml
	promtool check rules $(MONITORING)/rules/*.yml
	cd $(MONITORING)/tests && promtool test rules *.yml

ci: lint typecheck monitoring-check test contracts-check ## what .ci/run runs (plus a quick mutation run)
	$(MAKE) mutation MUTANTS="consumer.* stemctl.*"

clean: ## remove virtualenvs and caches
	rm -rf $(VENV) .venv-contracts .pytest_cache .mypy_cache .ruff_cache
