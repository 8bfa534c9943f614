#!/usr/bin/env bash
# `make device-wheels`: what a lent GPU machine lacks of jaxpong's dependencies, as files that
# tools/device_bench.sh installs there without a network: cp312 manylinux x86-64 wheels, and mpi4jax's
# source (it has no wheel; it is built there, against that machine's own jax and the mpich wheel's mpicc).
# The machine's image already holds jax (0.11.2 with CUDA), flax, optax, orbax, numpy, scipy, matplotlib,
# rich, pyyaml, tensorboard, protobuf, absl-py and cloudpickle; only what it lacks, or holds at a version we
# do not run (mpi4py), travels. What travels with the working tree is capped (64 MiB in all), so envpool's
# wheel (53 MB, every env family) and its assets' (62 MB) are repacked with Atari alone: about 4 MB.
# Usage: tools/device_wheels.sh [DIR]   (default .whl, which .git/info/exclude should ignore: /.whl/)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PYTHON=${PYTHON:-python3}
LIMIT_MIB=64

# The pins of pyproject.toml, where it pins the package.
pin() { grep -o "\"$1==[^\"]*\"" pyproject.toml | head -1 | tr -d '"'; }
# Their own dependencies the image lacks, at the versions jaxpong's tests ran with; setuptools and nanobind
# at the versions mpi4jax's build asks for (it is built with --no-build-isolation, so these are not fetched).
EXTRA="envpool-assets==0.3.0 dm-env==1.6 optree==0.20.0 gymnasium==1.4.0 farama-notifications==0.0.6
    setuptools==84.2.1 nanobind==3.1.0"

rm -rf "$DIR"
mkdir -p "$DIR"
# pip matches a manylinux tag exactly: name every one the wheels use.
platforms=()
for tag in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
    manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
# shellcheck disable=SC2046,SC2086  # word splitting of the package lists is intended
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$DIR" \
    $(pin envpool) $(pin mpich) $(pin mpi4py) $(pin tensorboardX) $EXTRA
# mpi4jax publishes no wheels: its source, built on the machine.
"$PYTHON" -m pip download -q --no-deps --no-binary mpi4jax -d "$DIR" "$(pin mpi4jax)"

# Repack with `wheel unpack` / `wheel pack` (which rewrites RECORD), run from its own wheel file so that no
# environment here needs it installed. The build tag `1atari` marks the slimmed files.
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"$PYTHON" -m pip download -q --no-deps -d "$tools" wheel==0.48.0
wheel() { PYTHONPATH=$(echo "$tools"/wheel-*.whl) "$PYTHON" -m wheel "$@"; }
slim() {  # slim WHEEL PACKAGE: keep PACKAGE's top-level files and its atari/ and python/ folders only
    local unpacked
    wheel unpack -d "$tools/unpacked" "$1"
    unpacked=$(echo "$tools"/unpacked/*)
    find "$unpacked/$2" -mindepth 1 -maxdepth 1 -type d ! -name atari ! -name python -exec rm -rf {} +
    # envpool imports every family's registration when it is imported: only Atari's is left to import.
    if [ -f "$unpacked/$2/entry.py" ]; then
        sed -i '/^import envpool\./{/^import envpool\.atari\./!d}' "$unpacked/$2/entry.py"
    fi
    rm "$1"
    wheel pack --build-number 1atari -d "$DIR" "$unpacked"
    rm -rf "$tools/unpacked"
}
slim "$(echo "$DIR"/envpool-[0-9]*.whl)" envpool
slim "$(echo "$DIR"/envpool_assets-*.whl)" envpool_assets
ls -l "$DIR"

# What travels: the tracked files, the untracked ones git does not ignore, and DIR.
repo_bytes=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -cb --files0-from=- | tail -1 | cut -f1)
wheel_bytes=$(du -cb "$DIR" | tail -1 | cut -f1)
total_mib=$(( (repo_bytes + wheel_bytes) / 1048576 ))
echo "device-wheels: $DIR $(( wheel_bytes / 1048576 )) MiB + working tree $(( repo_bytes / 1048576 )) MiB = ${total_mib} MiB" \
    "of the ${LIMIT_MIB} MiB that may travel"
if (( repo_bytes + wheel_bytes > LIMIT_MIB * 1048576 )); then
    echo "device-wheels: over ${LIMIT_MIB} MiB: the lent machine would refuse the call" >&2
    exit 1
fi
