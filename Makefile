# Two entry points for a fresh machine: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench

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

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	for b in bench/*.py; do $(PY) $$b || exit 1; done
