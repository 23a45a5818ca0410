# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
# Both first run tools/setup_env.sh (idempotent: a virtual environment in .venv with the pinned
# PyTorch, real Detectron2 v0.6 and this package).
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= output/demo
export OMP_NUM_THREADS ?= 2

.PHONY: setup test test-all demo demo-memory lint benchmark-memory

setup:
	bash tools/setup_env.sh $(VENV)

test: setup
	$(PY) -m pytest -q --durations=15

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow" --durations=15

# The main job on built-in data, small enough for a laptop CPU (see README "make demo").
demo: setup demo-memory
	@echo "demo outputs are in $(OUT)"

demo-memory:
	$(PY) tools/benchmark_memory.py --steps 5 10 20 --methods bptt rbp crbp --kernel 5 --size 100 \
		--json $(OUT)/memory.json

# The benchmark in the README (Pathfinder hGRU core at 150x150, kernel 15).
benchmark-memory: setup
	$(PY) tools/benchmark_memory.py --steps 5 20 80 --methods bptt tbptt rbp crbp \
		--json docs/results/memory_cpu.json

lint: setup
	$(PY) -m pip install -q ruff && $(VENV)/bin/ruff check crbp_d2 tools tests datasets
