# vmctl: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TEST_EXTRAS ?= dev,kit,kvm,esx,xen,hyperv,docs
PYTEST_ARGS ?=

.PHONY: demo test check docs venv test-venv lint typecheck unit hosts-deps host-kvm host-esx host-xen host-hyperv \
        hosts-stop conformance-sim mutants bench matrix clean

# vmctl and the conformance kit's pytest ([kit]): `vmctl conformance sim://` works after
# `make demo`.
$(VENV)/.stamp-core: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -U pip setuptools wheel
	$(PIP) install -e ".[kit]"
	touch $@

venv: $(VENV)/.stamp-core

## make demo: set up and run the narrated walkthrough on the embedded sim:// backend
demo: venv
	$(PY) -m vmctl.demo   # ends by saying how to reach vmctl (. .venv/bin/activate)

## the hosts' system packages (apt) and builds, each script installs only what is missing
hosts-deps:
	@for s in tests/hosts/install-*.sh; do [ -f "$$s" ] && bash "$$s" || exit 1; done
## one host's packages only (make host-esx needs no KVM packages)
hosts-deps-%:
	@if [ -f tests/hosts/install-$*.sh ]; then bash tests/hosts/install-$*.sh; fi

$(VENV)/.stamp-test: $(VENV)/.stamp-core setup.cfg
	$(PIP) install -e ".[$(TEST_EXTRAS)]"
	$(PIP) install -e examples/vmctl-toy
	touch $@

test-venv: hosts-deps $(VENV)/.stamp-test

lint: test-venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: test-venv
	$(VENV)/bin/mypy

## make test: install what the tests need, start the hosts, run ruff, mypy and every test
test: test-venv lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

## make check: the inner loop (lint, types and the sim:// tests but the slow ones, the whole
## kit runs and the mutant catalogue: about a minute and a half; no hosts started)
check: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -m "sim and not slow" -q $(PYTEST_ARGS)

## make docs: the documentation site (docs/*.md, README, the spec, the API reference from the
## docstrings) in build/site, warnings as errors; `make test` builds it too (tests/docs/test_site.py)
docs: $(VENV)/.stamp-test
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

conformance-sim: venv
	$(VENV)/bin/vmctl conformance sim:// --report reports/sim.md

## the kit against a catalogue of driver bugs put one at a time into sim:// (tests/mutants)
mutants: $(VENV)/.stamp-test
	$(PY) tests/mutants/harness.py

## side-by-side benchmarks (each starts what it needs); they print ratios, they do not fail
bench: test-venv
	$(PY) bench/import_time.py
	$(PY) bench/kvm_list.py $$([ -S /var/run/libvirt/libvirt-sock ] && echo --daemon)
	$(PY) bench/backup.py
	$(PY) bench/esx_list.py
	$(PY) bench/xen_list.py
	$(PY) bench/events.py
	$(PY) bench/hyperv_list.py
	$(PY) bench/evacuate.py
	$(PY) bench/fleet.py

## the verified support matrix: merges the kit reports `make test` leaves in reports/ into
## docs/support-matrix.md (backends without a report keep their column; none: nothing written)
matrix:
	$(PY) -m vmctl_conformance.matrix --update docs/support-matrix.md $(wildcard reports/*.json)

## hosts to try things by hand; each writes .hosts/<name>.env
host-kvm: hosts-deps-kvm $(VENV)/.stamp-test
	$(PY) -m tests.hosts.kvm start
host-esx: hosts-deps-esx $(VENV)/.stamp-test
	$(PY) -m tests.hosts.esx start
host-xen: hosts-deps-xen $(VENV)/.stamp-test
	$(PY) -m tests.hosts.xen start
host-hyperv: $(VENV)/.stamp-test
	$(PY) -m tests.hosts.hyperv start
hosts-stop:
	@for h in kvm esx xen hyperv; do \
	  if [ -f .hosts/$$h.pids ]; then $(PY) -m tests.hosts.$$h stop; fi; done

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache reports
