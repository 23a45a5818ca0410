# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
# Both first run tools/setup_env.sh (idempotent: a virtual environment in .venv with the pinned
# PyTorch, real Detectron2 v0.6 and this package).
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= output/demo
export OMP_NUM_THREADS ?= 2

.PHONY: setup test test-all check-wheel demo demo-small demo-memory demo-pathfinder demo-d2 demo-d2-train \
	demo-d2-evaluate demo-summary lint \
	benchmark-memory benchmark-methods rfpn-cpu-protocol rfpn-finetune-vs-scratch demo-record

setup:
	bash tools/setup_env.sh $(VENV)

# make test = lint (ruff, pinned in requirements.txt) then the tests.
test: setup
	@$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q --durations=15

test-all: setup
	$(PY) -m pytest -q --durations=15

# The wheel alone (torch + numpy): build it, install it into an empty venv, one C-RBP step there,
# and the front-ends' one-line "install the extra" errors (7-8 min on a shared 2-core machine,
# most of it pip installing torch; docs/results/wheel_check.json). Also a slow test.
check-wheel: setup
	BUILD_PYTHON=$(PY) bash tools/check_wheel.sh

# The main job on built-in data, small enough for a laptop CPU (see README "make demo"). Each
# step prints one line when it ends; its output goes to $(OUT)/logs/<step>.log (the end of it is
# shown if the step fails); the summary at the end is also in $(OUT)/summary.md. Seeds are fixed,
# so two runs print the same summary. The R-FPN training has both cores; then two lanes of one
# thread each share them: the R-FPN evaluation, sweep and images (mostly single-threaded Python
# work) beside the memory benchmark and the Pathfinder part. Each step's seconds, and the wall
# time of the whole, go to $(OUT)/logs/seconds.txt.
LOGS = $(OUT)/logs
# $(call step,DESCRIPTION,LOG NAME,COMMAND)
define step
	@mkdir -p $(LOGS); start=$$(date +%s); \
	if $(3) > $(LOGS)/$(2).log 2>&1; then \
		printf '  %-62s ok (%d s)\n' '$(1)' "$$(( $$(date +%s) - start ))"; \
	else printf '  %-62s FAILED; the end of %s:\n' '$(1)' '$(LOGS)/$(2).log'; \
		tail -n 30 $(LOGS)/$(2).log; exit 1; fi; \
	echo "$(2) $$(( $$(date +%s) - start )) s" >> $(LOGS)/seconds.txt
endef

demo: setup
	@mkdir -p $(LOGS); rm -f $(LOGS)/seconds.txt; date +%s > $(LOGS)/.start
	@echo "make demo: outputs in $(OUT), logs in $(LOGS)"
	@$(MAKE) --no-print-directory demo-d2-train
	@$(MAKE) --no-print-directory -j2 OMP_NUM_THREADS=1 demo-d2-evaluate demo-small
	@echo "wall $$(( $$(date +%s) - $$(cat $(LOGS)/.start) )) s" >> $(LOGS)/seconds.txt
	@$(MAKE) --no-print-directory demo-summary

# The memory benchmark, then the Pathfinder part (one lane of make demo).
demo-small:
	@$(MAKE) --no-print-directory demo-memory
	@$(MAKE) --no-print-directory demo-pathfinder

demo-memory:
	$(call step,memory vs steps of BPTT / RBP / C-RBP (hGRU core),memory,\
		$(PY) tools/benchmark_memory.py --steps 5 10 20 --methods bptt rbp crbp --kernel 5 \
		--size 100 --json $(OUT)/memory.json)

# Pathfinder: generate a small PF9 set, train a small C-RBP hGRU briefly, evaluate it past its
# training steps, plot IoU vs steps (with the marker-only and flood-fill baselines) and the
# step-by-step segmentation of one image.
PF := $(OUT)/pathfinder
demo-pathfinder:
	$(call step,Pathfinder: generate 400 PF9 images,pf_generate,\
		$(PY) tools/generate_pathfinder.py --length 9 --num 400 --num-test 64 --seed 0 \
		--format npy --store-size 64 --set canvas_size=128 --set padding=10 \
		--set num_distractors=3 --out $(PF)/data --no-progress)
	$(call step,Pathfinder: train a C-RBP hGRU,pf_train,\
		$(PY) tools/train_pathfinder.py --config-file configs/pathfinder/demo.yaml --no-progress \
		--overwrite OUTPUT_DIR $(PF)/run DATA.SOURCE disk DATA.ROOT $(PF)/data \
		DATA.TRAIN_SIZE 0 DATA.TEST_SIZE 0)
	$(call step,Pathfinder: evaluate at N and at 30 steps,pf_eval,\
		$(PY) tools/train_pathfinder.py --config-file configs/pathfinder/demo.yaml --eval-only \
		--eval-steps 30 OUTPUT_DIR $(PF)/run DATA.SOURCE disk DATA.ROOT $(PF)/data \
		DATA.TEST_SIZE 0)
	$(call step,Pathfinder: IoU vs steps + baselines,pf_steps,\
		$(PY) tools/pathfinder_steps.py --checkpoints crbp=$(PF)/run/last.pth --max-steps 30 \
		--out $(PF)/steps)
	$(call step,Pathfinder: timecourse of one image,pf_timecourse,\
		$(PY) tools/pathfinder_timecourse.py --checkpoint $(PF)/run/last.pth --max-steps 30 \
		--out $(PF)/timecourse)

# Detectron2: the quick R-FPN C-RBP recipe (trains from random init on the synthetic shapes set,
# generated on first use), its evaluation (PQ, mask AP, the mask head on ground-truth boxes), a
# sweep of the test steps and Visualizer images with each detection's mask at every step.
D2_CFG := configs/quick/R-FPN-CRBP-synthetic.yaml
D2_OUT := $(OUT)/rfpn
D2_VAL := datasets/synthetic_panoptic_large/val
demo-d2:
	@$(MAKE) --no-print-directory demo-d2-train
	@$(MAKE) --no-print-directory demo-d2-evaluate

demo-d2-train:
	$(call step,R-FPN: train the quick C-RBP recipe from random init,rfpn_train,\
		$(PY) tools/train_net.py --config-file $(D2_CFG) --overwrite OUTPUT_DIR $(D2_OUT) TEST.EVAL_PERIOD 0 \
		DATASETS.TEST "()")

demo-d2-evaluate:
	$(call step,R-FPN: evaluate (PQ / mask AP / masks on GT boxes),rfpn_eval,\
		$(PY) tools/train_net.py --config-file $(D2_CFG) --eval-only \
		MODEL.WEIGHTS $(D2_OUT)/model_final.pth OUTPUT_DIR $(D2_OUT)/eval TEST.GT_BOX_MASKS True)
	$(call step,R-FPN: PQ and mask IoU vs test steps,rfpn_sweep,\
		$(PY) tools/timestep_sweep.py --config-file $(D2_CFG) --output $(D2_OUT)/sweep \
		--steps 1-12 --gt-box MODEL.WEIGHTS $(D2_OUT)/model_final.pth)
	$(call step,R-FPN: panoptic and per-step images,rfpn_images,\
		$(PY) tools/demo.py --config-file $(D2_CFG) --input $(D2_VAL) --max-images 4 \
		--timecourse --output $(D2_OUT)/images --opts MODEL.WEIGHTS $(D2_OUT)/model_final.pth)

demo-summary:
	@$(PY) -m crbp_d2.cli.demo_summary $(OUT)

# make demo, then its step timings and summary into docs/results/demo.{json,md} (README block)
demo-record: demo
	$(PY) -m crbp_d2.cli.demo_summary $(OUT) --results docs/results/demo

# The benchmarks whose tables are in the README (each writes docs/results/NAME.{json,md,png};
# `python tools/update_readme.py` then copies the tables into the README).
benchmark-memory: setup
	$(PY) tools/benchmark_memory.py --steps 5 20 80 --methods bptt tbptt rbp crbp \
		--json docs/results/memory_cpu.json

benchmark-methods: setup
	OMP_NUM_THREADS=1 $(PY) tools/benchmark_methods.py --steps 5 20 80 --out docs/results/methods_cpu

rfpn-cpu-protocol: setup
	$(PY) tools/rfpn_cpu_protocol.py --steps 6 --seeds 0 1

# A fresh recurrent head fine-tuned on the trained FPN quick twin (the rest frozen) against R-FPN
# trained from scratch on the same budget (500 and 1750 steps), one run at a time with 2 threads:
# about 20 min on 2 idle cores; docs/results/rfpn_finetune.{json,md}.
rfpn-finetune-vs-scratch: setup
	$(PY) tools/rfpn_finetune.py --budgets 500 1750 --seeds 0 --threads 2

# The same checks as .pre-commit-config.yaml (settings in pyproject.toml).
LINT_PATHS := crbp_d2 tools tests datasets configs setup.py
lint: setup
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
