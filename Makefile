# Two entry points for a fresh machine: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench browser services services-stop

setup: $(VENV)/.installed

# torch==2.13.0 first: on the project's CPU machines pip finds that CPU wheel on local disk,
# and the package's own torch range (>=2.2,<3) is then already satisfied, so no CUDA build is pulled.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

demo: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/demo.sh

test: setup browser
	$(PY) -m pytest -q -p no:cacheprovider

# The report's test opens the HTML in headless Chromium: Debian's package, installed where missing.
# Without apt (or rights to use it) the message says so and that one test is skipped.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ( $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium ) || \
	  echo "could not install chromium: tests/test_report.py's browser test will be skipped"

bench: setup
	for b in bench/*.py; do $(PY) $$b || exit 1; done

# PostgreSQL, an S3 server (moto) and a two-node Ray cluster on 127.0.0.1, for the scale-out tests
# (tests/test_ray.py, tests/test_shared_catalog.py) and for trying a shared catalog by hand:
#   make services && eval "$$(scripts/services.sh env)" && make test
services: setup
	PYTHON=$(CURDIR)/$(PY) scripts/services.sh start

services-stop:
	PYTHON=$(CURDIR)/$(PY) scripts/services.sh stop
