# Two entry points, each self-contained on a fresh machine with Python 3.10+:
#   make demo   installs the package into .venv and runs the demo on built-in synthetic data:
#               the RoI detector, the classifier on its boxes, predict on held-out DICOMs
#   make test   also installs the test tools (torch CPU, transformers, pytest; Orthanc, a PACS,
#               from apt) and runs the suite
# and, for the inner loop, make test-fast: the unit tests only (not the `slow` marker).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Parity tests compare against PyTorch. 2.13.0 is the CPU build available offline on our CI
# machines; an unpinned torch resolves to a multi-GB CUDA build. Elsewhere, e.g.
#   make test TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# One pytest worker per core (at most 4), a test file per worker: the suite is mostly XLA
# compiles and subprocess start-ups, which run on one core each. Files go out in the order
# tests/conftest.py sorts them, longest first (xdist would otherwise hand out the files with the
# most tests first, and the few long end-to-end files would run last, alone).
PYTEST_ARGS ?= -n auto --maxprocesses=4 --dist=loadfile --no-loadscope-reorder

.PHONY: demo test test-fast bench clean orthanc cxx

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q $(TORCH_INDEX) "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

# The two-stage system on synthetic DICOMs: the RoI detector, the classifier on its boxes, then
# predict on held-out DICOM files with no proposal files (configs/demo.py).
demo: $(VENV)/.installed
	$(BIN)/python -m attend_jax.main --config=configs/demo.py:detector --workdir=workdirs/demo_detector
	$(BIN)/python -m attend_jax.main --config=configs/demo.py --workdir=workdirs/demo
	$(BIN)/python -m attend_jax.predict --workdir=workdirs/demo workdirs/demo_data/heldout \
	    --out=workdirs/demo/predict --overlays

# Orthanc and its DICOMweb plugin: the real PACS of tests/test_dicomweb.py (tests/orthanc.py),
# from Debian or Ubuntu, once (as root, or through sudo). Where neither apt nor root is at hand,
# ATTEND_JAX_SKIP_ORTHANC=1 skips both the install and those tests.
AS_ROOT := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
orthanc:
	@if [ "$$ATTEND_JAX_SKIP_ORTHANC" != 1 ] && ! [ -x /usr/sbin/Orthanc -a \
	    -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then \
	  command -v apt-get >/dev/null || { echo "make test needs Orthanc (apt packages orthanc," \
	    "orthanc-dicomweb) and found no apt-get: install them, or set ATTEND_JAX_SKIP_ORTHANC=1" \
	    "to skip the PACS tests" >&2; exit 1; }; \
	  $(AS_ROOT) apt-get update -qq && $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get \
	    install -y -qq --no-install-recommends orthanc orthanc-dicomweb; fi

# A C++ compiler: a CPU step builds its fused attention kernel (attend_jax/models/cpu_attention.cc)
# once per machine, and its tests need it. Without one, training on a CPU takes XLA's slower loop.
cxx:
	@if ! command -v $${CXX:-c++} >/dev/null; then \
	  command -v apt-get >/dev/null || { echo "make test needs a C++ compiler for the CPU" \
	    "attention kernel: install g++ (or clang++ and set CXX)" >&2; exit 1; }; \
	  $(AS_ROOT) apt-get update -qq && $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get \
	    install -y -qq --no-install-recommends g++; fi

test: $(VENV)/.installed-test orthanc cxx
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests

test-fast: $(VENV)/.installed-test orthanc cxx
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "not slow" tests

bench: $(VENV)/.installed-test
	$(BIN)/python tools/bench_vit.py

clean:
	rm -rf $(VENV) workdirs .pytest_cache
