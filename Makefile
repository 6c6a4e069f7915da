# The README's two set-up commands (`make demo`, `make test`) and the developer targets.
# Every target creates .venv when it is missing and (re)installs when setup.py changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ptjf-installed
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) setup.py pyproject.toml
	$(PY) -m pip install -q -e '.[data,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ptjf demo

test: $(STAMP)
	$(PY) -m ruff check ptjf tasks tests benchmarks launch
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check ptjf tasks tests benchmarks launch
	$(PY) -m ruff format --check ptjf tasks tests benchmarks launch

bench: $(STAMP)
	mkdir -p bench_results
	$(PY) benchmarks/train_throughput.py --out bench_results/train_throughput.json

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
