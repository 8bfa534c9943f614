#!/usr/bin/env bash
# `make bench-device`: what 2 cores cannot measure, in one script sized for a lent 16-core GPU machine (about
# 9 minutes there; docs/benchmarks.md, "On a lent 16-core machine"):
#   1. `bench --ranks N`: N ranks (each on cores / N) against one rank on its share and on all the cores;
#      its runs also warm the compilation cache for the learning runs and drive the predictions.
#   2. `simulate --calibrate` under N ranks, then `simulate --predict` for 1 and N ranks from those runs and
#      the batch study (tools/batch_study/results.jsonl): predicted seconds to a last-20 mean of +18.
#   3. `bench --learn` of configs/default.yaml to +18 (--target-return 18), seeds 1..SEEDS at 1 rank, then at
#      N ranks: wall-clock seconds and agent steps to +18 for each seed.
#   4. `python -m jaxpong.bench.device`: predicted and measured seconds to +18 side by side.
# Every step's log, the run folders (without checkpoints) and the summary are packed into OUT after each step,
# so a run stopped early still returns what it did: OUT/device_bench.tar.gz, summary.md, summary.json,
# env.txt and this script's own output, device_bench.log.
#
# Settings (environment variables):
#   DEVICE_WHEELS=DIR   first install DIR (`make device-wheels`: cp312 wheels and mpi4jax's source) into a
#                       fresh venv, DEVICE_VENV (default /tmp/jaxpong-device-venv), made from DEVICE_PYTHON
#                       (default python3, the machine's own, whose packages it also sees); unset: run with PY
#   PY                  the Python that runs jaxpong without DEVICE_WHEELS (default .venv/bin/python)
#   OUT                 where the packed results go (default runs/device_bench_out; the lent machine sets it)
#   DEVICE_WORK         the run folders and logs (default runs/device_bench)
#   DEVICE_QUICK=1      the same commands at a size for 2 cores, to check them: 2 ranks, runs of seconds
#   DEVICE_RANKS        N, the rank count set against 1 (default 8; quick 2)
#   DEVICE_SEEDS        seeds at each count (default 2)
#   DEVICE_ONE_RANK_S   --time-limit-s of each 1-rank seed (default 150; quick 15)
#   DEVICE_RANKS_S      --time-limit-s of each N-rank seed (default 75; quick 15)
#   DEVICE_SCALING_S    --seconds of `bench --ranks N` (default 10)
#   DEVICE_SIDE_BY_SIDE 1 (default): the 1-rank seeds train at once, each on its share of the cores (taskset),
#                       to fit the time; 0: one after another, each on all the cores
#   DEVICE_DEADLINE_S   seconds from the script's start by which it should end: the learning runs' limits
#                       shrink to fit what is left (default 560, under the lent machine's 600-s command limit;
#                       quick 0: no deadline)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

FAILED_STEPS=""
QUICK=${DEVICE_QUICK:-0}
if [ "$QUICK" = 1 ]; then q=1; else q=0; fi
pick() { if [ "$q" = 1 ]; then echo "$2"; else echo "$1"; fi; }  # pick DEVICE_VALUE QUICK_VALUE
N=${DEVICE_RANKS:-$(pick 8 2)}
SEEDS=${DEVICE_SEEDS:-2}
ONE_RANK_S=${DEVICE_ONE_RANK_S:-$(pick 150 15)}
RANKS_S=${DEVICE_RANKS_S:-$(pick 75 15)}
SCALING_S=${DEVICE_SCALING_S:-$(pick 10 10)}
SIDE_BY_SIDE=${DEVICE_SIDE_BY_SIDE:-1}
DEADLINE_S=${DEVICE_DEADLINE_S:-$(pick 560 0)}
W=${DEVICE_WORK:-runs/device_bench}
OUT=${OUT:-runs/device_bench_out}
CONFIG=configs/default.yaml
STUDY=tools/batch_study

rm -rf "$W"
mkdir -p "$W" "$OUT"
W=$(cd "$W" && pwd)
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/device_bench.log") 2>&1
tee_pid=$!
# A fresh compilation cache: the first runs compile, as on a fresh machine, and warm it for the later ones.
export JAXPONG_COMPILE_CACHE=$W/xla_cache PYTHONUNBUFFERED=1
# The default's MLP runs on the CPU cores (--jax-platform auto); should any process here start JAX on the GPU,
# it must not take 75 % of its memory, as JAX does by default, ahead of the others.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

pack() {  # the run folders and logs (checkpoints, TensorBoard events and the cache left out), the summary
    tar -czf "$OUT/device_bench.tar.gz.part" -C "$(dirname "$W")" --exclude='checkpoints*' --exclude='xla_cache' \
        --exclude='events.out.tfevents*' "$(basename "$W")" && mv "$OUT/device_bench.tar.gz.part" "$OUT/device_bench.tar.gz"
    for f in summary.md summary.json env.txt; do
        if [ -f "$W/$f" ]; then cp "$W/$f" "$OUT/"; fi
    done
}

step() {  # step NAME COMMAND...: run it into W/NAME.log, say how it ended and how long it took, pack
    local name=$1 start=$SECONDS rc=0
    shift
    echo "== $name (at ${SECONDS} s): $*"
    "$@" > "$W/$name.log" 2>&1 || rc=$?
    [ $rc = 0 ] || FAILED_STEPS="$FAILED_STEPS $name"
    echo "== $name: $([ $rc = 0 ] && echo ok || echo "FAILED ($rc)") after $((SECONDS - start)) s; its last lines:"
    tail -n 4 "$W/$name.log" | cut -c1-400
    pack
    return $rc
}

install_wheels() {  # the wheels into a fresh venv that also sees the machine's own packages
    local venv=$1 site
    rm -rf "$venv"
    "$PYTHON_BASE" -m venv --without-pip "$venv" || return
    # The machine's python3 can itself be a venv (PyTorch's): a venv made from it would not see its packages
    # (jax, flax, optax, ...), so a .pth file appends its site-packages after the venv's own, where the
    # wheels go first (mpi4py 4.1.2 over the image's, and the mpich wheel's MPI next to the venv's python).
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PYTHON_BASE" -c 'import site; print("\n".join(site.getsitepackages()))' > "$site/machine.pth"
    local pip=("$PYTHON_BASE" -m pip --python "$venv/bin/python")
    "${pip[@]}" install -q --no-index --no-deps --no-compile "$DEVICE_WHEELS"/*.whl || return
    # mpi4jax: built here against this jax and the mpich wheel's mpicc; CPU only (an empty CUDA_PATH), since
    # JAX runs the MLP on the CPU cores and its CUDA bridge would need the CUDA headers.
    mkdir -p "$venv/nocuda"
    PATH="$venv/bin:$PATH" CUDA_PATH="$venv/nocuda" MPI4JAX_BUILD_MPICC="$venv/bin/mpicc" \
        "${pip[@]}" install -q --no-index --no-deps --no-build-isolation "$DEVICE_WHEELS"/mpi4jax-*.tar.gz
}

environment() {  # what the machine is: cores (and whether they are hardware threads), GPU, the versions used
    nproc
    lscpu | grep -E 'Model name|^CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|NUMA node'
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    free -g | head -2
    "$MPIRUN" --version | head -3
    "$PY" -c 'import sys; print(sys.version)'
    "$PY" -m jaxpong --version
    # the versions in use, and that envpool and mpi4jax import (the step fails if they do not)
    "$PY" - <<'EOF'
from importlib.metadata import version
for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "envpool", "mpi4py", "mpi4jax", "mpich"):
    try:
        print(name, version(name))
    except Exception as err:
        print(name, "missing:", err)
import envpool
import mpi4jax
print("envpool", envpool.__file__, "and mpi4jax", mpi4jax.__file__, "import")
EOF
}

cores_of() {  # cores_of K PARTS: the K-th of PARTS equal slices of this process's cores, as taskset wants them
    "$PY" -c 'import os, sys; c = sorted(os.sched_getaffinity(0)); k, n = map(int, sys.argv[1:]); s = len(c) // n
print(",".join(map(str, c[k * s : (k + 1) * s])))' "$1" "$2"
}

learn() {  # learn CORES RANKS SECONDS DIR [FLAGS]: `bench --learn` of the default to +18 (no greedy games after)
    local cores=$1 ranks=$2 seconds=$3 dir=$4 pin=()
    shift 4
    if [ "$cores" != all ]; then pin=(taskset -c "$cores"); fi  # its training runs inherit the pinning
    "${pin[@]}" "$PY" -m jaxpong bench --learn --config "$CONFIG" --target-return 18 --time-limit-s "$seconds" \
        --greedy-games 0 --ranks "$ranks" --run-dir "$dir" "$@"
}

one_rank() {  # the 1-rank seeds: side by side on slices of the cores, or one after another on all of them
    if [ "$SIDE_BY_SIDE" != 1 ]; then
        learn all 1 "$ONE_RANK_S" "$W/learn_1" --seed 1 --seeds "$SEEDS"
        return
    fi
    local pids=() rc=0 k cores
    for ((k = 1; k <= SEEDS; k++)); do
        cores=$(cores_of $((k - 1)) "$SEEDS")
        echo "seed $k on cores $cores"
        learn "$cores" 1 "$ONE_RANK_S" "$W/learn_1/part_$k" --seed "$k" --seeds 1 > "$W/learn_1_seed_$k.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
    tail -n 3 "$W"/learn_1_seed_*.log
    return $rc
}

fit_to_deadline() {  # shrink the learning runs' limits in proportion where they would outlast DEVICE_DEADLINE_S
    [ "$DEADLINE_S" -gt 0 ] || return 0
    local per_run=10  # each `bench --learn` process's own start and end around its training run
    local one=$(( (SIDE_BY_SIDE == 1 ? 1 : SEEDS) * (ONE_RANK_S + per_run) )) many=$(( SEEDS * (RANKS_S + per_run) ))
    local left=$(( DEADLINE_S - SECONDS - 20 ))  # 20 s for the summary and the last pack
    if (( left < 60 )); then  # too little left to learn anything: the learning steps still run, briefly
        left=60
    fi
    if (( one + many > left )); then
        ONE_RANK_S=$(( ONE_RANK_S * left / (one + many) ))
        RANKS_S=$(( RANKS_S * left / (one + many) ))
        echo "== ${left} s left before DEVICE_DEADLINE_S: limits shrunk to ${ONE_RANK_S} s (1 rank) and ${RANKS_S} s ($N ranks)"
    fi
}

echo "== jaxpong device bench: $N ranks against 1, $SEEDS seeds, limits ${ONE_RANK_S} s / ${RANKS_S} s," \
    "bench --ranks $N --seconds $SCALING_S, side by side $SIDE_BY_SIDE, deadline ${DEADLINE_S} s, quick $QUICK; work $W"
if [ -n "${DEVICE_WHEELS:-}" ]; then
    PYTHON_BASE=${DEVICE_PYTHON:-python3}
    VENV=${DEVICE_VENV:-/tmp/jaxpong-device-venv}
    step install install_wheels "$VENV" || exit 1
    PY=$VENV/bin/python
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}  # jaxpong from this working tree, no install needed
else
    PY=${PY:-.venv/bin/python}
fi
MPIRUN=$(dirname "$PY")/mpirun
step environment environment && cp "$W/environment.log" "$W/env.txt" || exit 1
cores=$(nproc)

step scaling "$PY" -m jaxpong bench --ranks "$N" --config "$CONFIG" --seconds "$SCALING_S" --run-dir "$W/scaling"
step calibrate "$MPIRUN" -n "$N" -bind-to "core:$((cores / N))" "$PY" -m jaxpong simulate --calibrate "$W/collectives_$N.json"
collectives=()
if [ -f "$W/collectives_$N.json" ]; then collectives=(--collectives "$W/collectives_$N.json"); fi
step predict_1 "$PY" -m jaxpong simulate --predict "$STUDY" --from "$W/scaling/one_rank_all_cores" --ranks 1 --out "$W/predict_1"
step "predict_$N" "$PY" -m jaxpong simulate --predict "$STUDY" --from "$W/scaling/${N}_ranks_deadline" --ranks "$N" \
    "${collectives[@]}" --out "$W/predict_$N"

fit_to_deadline
step learn_1 one_rank
step "learn_$N" learn all "$N" "$RANKS_S" "$W/learn_$N" --seed 1 --seeds "$SEEDS"

shopt -s nullglob
step summary "$PY" -m jaxpong.bench.device --out "$W" \
    --count 1 "$W/predict_1.log" "$W"/learn_1/seed_* "$W"/learn_1/part_*/seed_* \
    --count "$N" "$W/predict_$N.log" "$W/learn_$N"/seed_*
cat "$W/summary.md" 2>/dev/null
echo "== done after ${SECONDS} s; results in $OUT${FAILED_STEPS:+; failed steps:$FAILED_STEPS}"
exec >&- 2>&-
wait "$tee_pid"  # so that device_bench.log is complete when the script returns
[ -z "${FAILED_STEPS:-}" ]  # the exit status says whether every step ran
