#!/usr/bin/env bash
# quickstart.sh - from a fresh Debian machine to Tessera's main job in one command: installs
# missing build dependencies, builds everything in build/ (Release, all cores), then runs the
# main job: `tessera train` with no options - the tiny DeepSeek-V4 preset trained on the embedded
# synthetic tasks (a few minutes on 2 cores), then sampled. Extra arguments go to `tessera train`
# (e.g. --steps 1000 --batch 8 --seq 256 for the spec's full tiny recipe).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTS_WERROR=OFF -DTS_SANITIZE=OFF
cmake --build build -j"$(nproc)"
echo
build/tessera train "$@"
