# Two entry points on a fresh machine (Python >= 3.10 with venv):
#   make up     install into .venv, then run the app with its embedded defaults (pixelfleet up)
#   make test   install into .venv, then run the whole test suite
# The install step pins the CPU torch wheel and the Ray release through constraints.txt.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: install up test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[test]'
	touch $(STAMP)

up: $(STAMP)
	$(VENV)/bin/pixelfleet up $(ARGS)

# tests/cluster starts a multi-node Ray of its own, so it runs in a second pytest process (only
# when ARGS is empty; `make test ARGS=tests/cluster` runs it alone)
test: $(STAMP)
	$(PY) -m pytest $(ARGS)
	$(if $(ARGS),,$(PY) -m pytest tests/cluster)

clean:
	rm -rf $(VENV) .pytest_cache
