# rba_plugin: the README's commands. Every target does set-up first when it is needed.
PYTHON_SYS ?= python3.11
VENV       := .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
# Set-up is redone only when what it depends on changes.
DEPS_STAMP  := $(VENV)/.rba-deps
BUILD_STAMP := $(VENV)/.rba-build
CSRC        := $(shell find rba_plugin/csrc -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' \))
PYTEST_ARGS ?=

export CUDA_HOME ?= /usr/local/cuda

.PHONY: setup test test-fast demo compare bench clean-build

setup: $(BUILD_STAMP)

$(VENV)/bin/python:
	$(PYTHON_SYS) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(DEPS_STAMP): $(VENV)/bin/python requirements.txt tools/install_detectron2.py
	$(PIP) install --quiet -r requirements.txt
	$(PY) tools/install_detectron2.py
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) setup.py $(CSRC)
	$(PIP) install --quiet --no-build-isolation --no-deps -e .
	$(PIP) check
	$(PY) -c "import rba_plugin, rba_plugin._C"
	touch $@

# The whole suite, slow end-to-end tests included (what CI runs). pytest's exit code 5
# ("no tests collected") is reported as a failure of its own rather than passed through silently.
test: setup
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The fast part only, for the edit-test loop.
test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The main job on the built-in synthetic benchmark: closed-set Mask2Former, RbA fine-tuning,
# MSP / MaxLogit / Energy / RbA before and after (tools/run_demo.py; results in output/demo).
demo: setup
	$(PY) tools/run_demo.py $(DEMO_ARGS)

# Every method of both branches on the synthetic benchmark with one budget: a ranked table in
# output/compare (PRESET=quick for minutes, PRESET=full for the configs' own schedules).
PRESET ?= quick
compare: setup
	$(PY) tools/compare_methods.py --preset $(PRESET) --output output/compare

bench: setup
	$(PY) tools/benchmark.py all

clean-build:
	rm -rf build rba_plugin/_C*.so $(BUILD_STAMP)
