# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
# Both first run tools/setup_env.sh (idempotent: a virtual environment in .venv with the pinned
# PyTorch, real Detectron2 v0.6 and this package).
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= output/demo
export OMP_NUM_THREADS ?= 2

.PHONY: setup test test-all demo demo-memory demo-pathfinder demo-d2 lint benchmark-memory

setup:
	bash tools/setup_env.sh $(VENV)

test: setup
	$(PY) -m pytest -q --durations=15

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow" --durations=15

# The main job on built-in data, small enough for a laptop CPU (see README "make demo").
demo: setup demo-memory demo-pathfinder demo-d2
	@echo "demo outputs are in $(OUT)"

demo-memory:
	$(PY) tools/benchmark_memory.py --steps 5 10 20 --methods bptt rbp crbp --kernel 5 --size 100 \
		--json $(OUT)/memory.json

# Pathfinder: generate a small PF9 set, train a small C-RBP hGRU briefly, evaluate it past its
# training steps, plot IoU vs steps and the step-by-step segmentation of one image.
PF := $(OUT)/pathfinder
demo-pathfinder:
	$(PY) tools/generate_pathfinder.py --length 9 --num 400 --num-test 64 --seed 0 --format npy \
		--store-size 64 --set canvas_size=128 --set padding=10 --set num_distractors=3 \
		--out $(PF)/data --no-progress
	$(PY) tools/train_pathfinder.py --config-file configs/pathfinder/demo.yaml --no-progress \
		OUTPUT_DIR $(PF)/run DATA.SOURCE disk DATA.ROOT $(PF)/data DATA.TRAIN_SIZE 0 DATA.TEST_SIZE 0
	$(PY) tools/train_pathfinder.py --config-file configs/pathfinder/demo.yaml --eval-only \
		--eval-steps 30 OUTPUT_DIR $(PF)/run DATA.SOURCE disk DATA.ROOT $(PF)/data DATA.TEST_SIZE 0
	$(PY) tools/pathfinder_steps.py --checkpoints crbp=$(PF)/run/last.pth --max-steps 30 \
		--out $(PF)/steps
	$(PY) tools/pathfinder_timecourse.py --checkpoint $(PF)/run/last.pth --max-steps 30 \
		--out $(PF)/timecourse

# Detectron2: the synthetic COCO-format panoptic set (made on first use), the quick R-FPN C-RBP
# config (trains from scratch on CPU, writes model_final.pth, evaluates PQ), a PQ-vs-steps sweep,
# and Visualizer images with the mask at every recurrent step.
D2_CFG := configs/quick/R-FPN-R50-CRBP-synthetic.yaml
D2_OUT := $(OUT)/rfpn
demo-d2:
	$(PY) -c "import crbp_d2.data as d; print('synthetic data:', d.ensure_synthetic_panoptic())"
	$(PY) tools/train_net.py --config-file $(D2_CFG) OUTPUT_DIR $(D2_OUT)
	$(PY) tools/train_net.py --config-file $(D2_CFG) --eval-only \
		MODEL.WEIGHTS $(D2_OUT)/model_final.pth OUTPUT_DIR $(D2_OUT)/eval
	$(PY) tools/timestep_sweep.py --config-file $(D2_CFG) --output $(D2_OUT)/sweep --steps 1-20 \
		--segm-ap MODEL.WEIGHTS $(D2_OUT)/model_final.pth
	$(PY) tools/demo.py --config-file $(D2_CFG) --input datasets/synthetic_panoptic/val \
		--max-images 4 --confidence-threshold 0.2 --timecourse --output $(D2_OUT)/images \
		--opts MODEL.WEIGHTS $(D2_OUT)/model_final.pth

# The benchmark in the README (Pathfinder hGRU core at 150x150, kernel 15).
benchmark-memory: setup
	$(PY) tools/benchmark_memory.py --steps 5 20 80 --methods bptt tbptt rbp crbp \
		--json docs/results/memory_cpu.json

lint: setup
	$(PY) -m pip install -q ruff && $(VENV)/bin/ruff check crbp_d2 tools tests datasets \
		&& $(VENV)/bin/ruff format --check crbp_d2 tools tests datasets setup.py
