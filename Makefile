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
	$(PY) -m ruff check ptjf tasks tests benchmarks launch scripts
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check ptjf tasks tests benchmarks launch scripts
	$(PY) -m ruff format --check ptjf tasks tests benchmarks launch scripts

bench: $(STAMP)
	mkdir -p bench_results
	$(PY) benchmarks/train_throughput.py --models nmt_3layer,tiny,mt5_small \
		--out bench_results/train_throughput.json
	$(PY) benchmarks/input_pipeline.py --train-json bench_results/train_throughput.json \
		--out bench_results/input_pipeline.json
	$(PY) benchmarks/stage_switch.py --out bench_results/stage_switch.json
	$(PY) benchmarks/checkpointing.py --out bench_results/checkpointing.json
	$(PY) benchmarks/resume.py --out bench_results/resume.json

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
