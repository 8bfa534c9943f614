# jaxpong: `make train` and `make test` set everything up on a fresh machine (Python 3.11+, no GPU).
# MPICC=/path/to/mpicc builds mpi4py and mpi4jax against that MPI instead of the mpich wheel.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MPICC ?=
CONFIG ?= configs/default.yaml
ARGS ?=
SECONDS ?= 20
SEEDS ?= 3
LEARN_SECONDS ?= 300

# mpi4jax builds its CUDA bridge whenever it finds nvcc; pointing CUDA_PATH at an empty folder keeps
# the default build CPU-only, also where a CUDA toolkit without headers is installed.
NOCUDA := $(abspath $(VENV))/nocuda

.PHONY: install train test test-slow test-scale lint wheel-check bench bench-learn bench-learn-ranks bench-two-like-one bench-batch-rules bench-real-ranks bench-ranks bench-scaling bench-startup bench-batch bench-sim bench-2016 bench-2016-speed bench-device device-wheels clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifeq ($(MPICC),)
	$(PY) -m pip install -q "mpich==5.0.2"
	mkdir -p $(NOCUDA)
	PATH="$(abspath $(VENV))/bin:$$PATH" CUDA_PATH=$(NOCUDA) MPI4JAX_BUILD_MPICC="$(abspath $(VENV))/bin/mpicc" \
		$(PY) -m pip install -q "mpi4py==4.1.2" "mpi4jax==0.9.1.post2"
	$(PY) -m pip install -q -e ".[mpich,test,dev]"
else
	mkdir -p $(NOCUDA)
	MPICC="$(MPICC)" $(PY) -m pip install -q --no-binary mpi4py --no-cache-dir "mpi4py==4.1.2"
	CUDA_PATH=$(NOCUDA) MPI4JAX_BUILD_MPICC="$(MPICC)" $(PY) -m pip install -q --no-cache-dir "mpi4jax==0.9.1.post2"
	$(PY) -m pip install -q -e ".[test,dev]"
endif
	touch $(STAMP)

# RESUME=RUN_DIR continues that run (its saved config) instead of starting one from CONFIG.
# JAXPONG_UNDER_MAKE: a graceful stop (Ctrl-C or SIGTERM: round finished, checkpoint written) exits 0 instead
# of 75, so make reports no error, and the stop line gives `make train RESUME=...` as the command to continue.
# exec: make waits for jaxpong itself (a shell in between would die at Ctrl-C while jaxpong still saves).
RESUME ?=
# RANKS=N (or auto): N ranks on this host through `train --ranks` (mpirun, each rank bound to its cores).
RANKS ?=
train: install
	JAXPONG_UNDER_MAKE=1 exec $(PY) -m jaxpong train $(if $(RESUME),--resume $(RESUME),--config $(CONFIG)) $(if $(RANKS),--ranks $(RANKS)) $(ARGS)

# make test leaves out the tests marked `scale` (16 ranks oversubscribed on 2 cores) and `slow` (long end-to-end
# checks), to stay within 15 minutes on 2 cores; make test-scale and make test-slow run those.
test: install
	$(PY) -m pytest -q -m "not scale and not slow and not multihost" --durations=25 tests $(ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow --durations=25 tests $(ARGS)

# Ranks on 2 hosts made of network namespaces (root): training over MPI's network module, a link down and
# up again, a partition (tests/multihost/).
test-multihost: install
	$(PY) -m pytest -q -m multihost tests/multihost $(ARGS)

# A slow link between 2 namespace hosts (root): the default config with free links, then with host 1's link
# limited to RATE (default 200mbit); round times, waits and the report's finding (runs/slow_link/results.json).
RATE ?= 200mbit
bench-slow-link: install
	$(PY) tests/multihost/bench_slow_link.py --rate $(RATE) $(ARGS)

test-scale: install
	$(PY) -m pytest -q -m scale tests $(ARGS)

# ruff (lint, then format check), mypy and lint-imports (the import-linter contracts: the stages import one
# way, no import circles), as configured in pyproject.toml; all four run, any finding fails.
LINT_PATHS := jaxpong tests .ci
lint: install
	@status=0; \
	echo "ruff check"; $(VENV)/bin/ruff check --output-format concise $(LINT_PATHS) || status=1; \
	echo "ruff format --check"; $(VENV)/bin/ruff format --check --output-format concise $(LINT_PATHS) || status=1; \
	echo "mypy"; $(VENV)/bin/mypy || status=1; \
	echo "lint-imports"; $(VENV)/bin/lint-imports || status=1; \
	exit $$status

# Build the wheel (dist/) and install it with the mpich extra into a fresh venv outside the repository, as the
# docs/install.md says; then `jaxpong --help`, `--version` and the shipped data from a temporary folder.
# Several minutes (it installs jax, envpool and compiles mpi4jax; pip's cache makes a second run faster).
wheel-check: install
	$(PY) .ci/wheel_check.py --python $(PYTHON)

bench: install
	$(PY) -m jaxpong bench --config $(CONFIG) --seconds $(SECONDS) $(ARGS)

bench-learn: install
	$(PY) -m jaxpong bench --learn --config $(CONFIG) --seeds $(SEEDS) --time-limit-s $(LEARN_SECONDS) $(ARGS)

bench-ranks: install
	$(PY) -m jaxpong bench --ranks 2 --slow-rank 1 --slow-factor 2 --config $(CONFIG) --seconds $(SECONDS) $(ARGS)

# Weak scaling: N ranks (each on cores / N) against one rank on its share, and raw envpool on all cores.
bench-scaling: install
	$(PY) -m jaxpong bench --ranks $(or $(RANKS),2) --config $(CONFIG) --seconds $(SECONDS) $(ARGS)

# `make train` to a won game: TRAIN_SEEDS seeds of the default (its +20 stop rule; checkpoints only at the end), each in a
# fresh process; time since process start and agent steps at the stop, then 10 greedy games of each agent.
TRAIN_SEEDS ?= 3
bench-train-to-win: install
	$(PY) -m jaxpong bench --learn --config $(CONFIG) --seeds $(TRAIN_SEEDS) --time-limit-s 3000 --run-dir runs/train_to_win $(ARGS)

# Time to +18 at 1 rank on all the cores against RANKS ranks (default 2) sharing its games: each seed at
# both counts in turn, milestones in seconds and agent steps, the median of the seeds' time ratios.
bench-learn-ranks: install
	$(PY) -m jaxpong bench --learn --ranks 1,$(or $(RANKS),2) --config $(CONFIG) --seeds $(SEEDS) --time-limit-s 600 --target-return 18 --run-dir runs/learn_ranks_1v$(or $(RANKS),2) $(ARGS)

# 2 ranks sharing the default's 32 games against 1 rank with all of them, compared in agent steps: LIKE_SEEDS
# seeds a side (interleaved), each trained to LIKE_STEPS agent steps with the learning-rate schedule of the
# default's 10M-step run and no early stop; steps to 0, +18 and +20 and the last-20 mean at equal agent steps,
# medians and rank-sum p-values. Resumable (runs/two_like_one/results.json). About 8 minutes a run on 2 cores.
# Extendable: `make bench-two-like-one LIKE_STEPS=1600000 LIKE_TARGET=20` resumes each seed from its last
# checkpoint to the larger budget, stopping a seed once its last-20 mean reaches +20.
LIKE_SEEDS ?= 6
LIKE_STEPS ?= 800000
LIKE_TARGET ?= nan
bench-two-like-one: install
	$(PY) -m jaxpong bench --learn --ranks 1,2 --config $(CONFIG) --seeds $(LIKE_SEEDS) --total-steps $(LIKE_STEPS) \
		--anneal-steps 10000000 --target-return $(LIKE_TARGET) --time-limit-s 3000 --greedy-games 0 --run-dir runs/two_like_one $(ARGS)

# Launch to first update at 1, 4 and 16 ranks (oversubscribed on small hosts), cold and warm compilation cache,
# one rank per host compiling first against every rank compiling.
bench-startup: install
	$(PY) -m jaxpong bench --startup --ranks 1,4,16 --config configs/smoke.yaml $(ARGS)

# Agent steps to 0 and +18 (and +20 where a run goes on to it) with 1x..16x the default's games in one
# process (the global batch of 2N ranks of 16 games, the share_games floor), under the batch rule: 3 seeds
# at 1x-4x, 2 at 8x and 16x, two runs at a time; resumable (results.jsonl), then simulate --predict turns
# it into wall-clock per rank count.
bench-batch: install
	$(PY) -m jaxpong.scale.batchstudy --config $(CONFIG) --scales 1,2,4 --seeds 1,2,3 --target-return 18 --jobs 2 --out runs/batch_study_10m $(ARGS)
	$(PY) -m jaxpong.scale.batchstudy --config $(CONFIG) --scales 8,16 --seeds 1,2 --target-return 18 --jobs 2 --out runs/batch_study_10m $(ARGS)

# The candidate update rules past 4x the default's games (docs/batch_scaling.md, "Candidate rules past 4x"):
# each arm at RULE_SCALES with RULE_SEEDS, to +18 or RULE_STEPS agent steps, next to today's rule; resumable
# (RULE_OUT/results.jsonl), so more seeds or scales can be added to the same folder later. The learning rate
# anneals over the config's 10M steps, not the cap (runs/batch_rules holds the first screen, annealed over 2.5M).
RULE_ARMS ?= minibatch,steps,sqrt_lr,minibatch+ewma,minibatch+kl
RULE_SCALES ?= 8
RULE_SEEDS ?= 1,2
RULE_STEPS ?= 2500000
RULE_OUT ?= runs/batch_rules_10m
bench-batch-rules: install
	$(PY) -m jaxpong.batchstudy --config $(CONFIG) --scales $(RULE_SCALES) --seeds $(RULE_SEEDS) --rules $(RULE_ARMS) \
		--total-steps $(RULE_STEPS) --target-return 18 --out $(RULE_OUT) $(ARGS)

# Real ranks against their emulation (docs/batch_scaling.md, "Real ranks against the emulation"): REAL_RANKS
# ranks sharing the config's games (the default's 32 down to 16 each: 4 ranks play 64, 2x), oversubscribed where
# the host has fewer cores, against one process with as many games under the same rule, in agent steps.
REAL_RANKS ?= 4
REAL_SEEDS ?= 1,2,3
REAL_ARM ?= minibatch
bench-real-ranks: install
	$(PY) -m jaxpong.batchstudy --config $(CONFIG) --ranks $(REAL_RANKS) --seeds $(REAL_SEEDS) --rules $(REAL_ARM) \
		--total-steps 2500000 --target-return 18 --out runs/real_ranks $(ARGS)

# The 2016 setup (configs/seed_ppg.yaml) at small scale, one core per rank as on ARCHER: 1 rank (two runs
# side by side, pinned to cores 0 and 1), then 2 ranks, each with the 2016 fixed 2-s windows (unscored
# steps get return 0) and with deadline masking (the same 2-s deadline, unscored steps masked). Then all four at
# 5 and 10 minutes and the end (RUNS_2016/curves.png, JSON last line). Needs 2 cores; takes 3 x PPG_SECONDS.
PPG_SECONDS ?= 900
RUNS_2016 ?= runs/2016
PPG = $(PY) -m jaxpong train --config configs/seed_ppg.yaml --num-threads 1 --xla-threads 1 --time-limit-s $(PPG_SECONDS) --overwrite --progress log --progress-every-s 60
bench-2016: install
	mkdir -p $(RUNS_2016)
	taskset -c 0 $(PPG) --deadline-s 2 --pg-unscored zero --run-dir $(RUNS_2016)/1rank_windows > $(RUNS_2016)/1rank_windows.log 2>&1 & \
	taskset -c 1 $(PPG) --deadline-s 2 --pg-unscored mask --run-dir $(RUNS_2016)/1rank_deadline > $(RUNS_2016)/1rank_deadline.log 2>&1 & \
	wait
	$(VENV)/bin/mpirun -bind-to core -n 2 $(PPG) --deadline-s 2 --pg-unscored zero --run-dir $(RUNS_2016)/2ranks_windows > $(RUNS_2016)/2ranks_windows.log 2>&1
	$(VENV)/bin/mpirun -bind-to core -n 2 $(PPG) --deadline-s 2 --pg-unscored mask --run-dir $(RUNS_2016)/2ranks_deadline > $(RUNS_2016)/2ranks_deadline.log 2>&1
	$(PY) -m jaxpong plot $(RUNS_2016)/1rank_windows $(RUNS_2016)/1rank_deadline $(RUNS_2016)/2ranks_windows \
		$(RUNS_2016)/2ranks_deadline --out $(RUNS_2016)/curves.png --at 300,600,$(PPG_SECONDS)

# The 2016 setup's speed (docs/seed_speed.md): jaxpong with one game per core against raw envpool with one
# game and one thread on the same cores, interleaved; 1 rank (pinned to core 0), then 2 ranks (mpirun
# -bind-to core). Each: REPEATS fresh trainers, SECONDS timed each, the median-ratio repeat reported.
REPEATS ?= 3
bench-2016-speed: install
	$(PY) -m jaxpong bench --per-core --ranks 1 --config configs/seed_ppg.yaml --seconds $(SECONDS) --repeats $(REPEATS) $(ARGS)
	$(PY) -m jaxpong bench --per-core --ranks 2 --config configs/seed_ppg.yaml --seconds $(SECONDS) --repeats $(REPEATS) $(ARGS)

# The scale simulator against real mpirun runs (1, 2 and 4 ranks; slow rank or not; deadline 0, auto, seconds):
# predicted against measured wait fractions, as a markdown table (docs/scale.md, "Validation against real runs").
SIM_SECONDS ?= 30
bench-sim: install
	$(PY) -m jaxpong simulate --validate --seconds $(SIM_SECONDS) $(ARGS)

# What a lent GPU machine (Python 3.12, x86-64, no network) lacks of jaxpong's dependencies, into .whl/ (add
# /.whl/ to .git/info/exclude): cp312 wheels, envpool's and its assets' repacked with Atari alone, and mpi4jax's
# source, which the machine builds itself; checks that they and the working tree stay within the 64 MiB that travel.
device-wheels:
	tools/device_wheels.sh .whl

# What 2 cores cannot measure, as one script of about 9 minutes for a lent 16-core GPU machine: `bench --ranks 8`,
# then the default to +18 at 1 and 8 ranks (2 seeds each, seconds and agent steps) beside `simulate --predict`'s
# seconds (docs/benchmarks.md, "On a lent 16-core machine"; settings at the top of tools/device_bench.sh). Here,
# `make bench-device DEVICE_QUICK=1` runs the same commands at 2 ranks for seconds each, to check them.
bench-device: install
	PY=$(PY) tools/device_bench.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
