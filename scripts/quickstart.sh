#!/usr/bin/env bash
# quickstart.sh - from a fresh Debian machine to Tessera's main job in one command: installs
# missing build dependencies, builds everything in build/ (Release, all cores), then runs the
# main job. Today that is `tessera demo` (an MLP learning a generated dataset); DeepSeek-V4
# training takes its place when it lands. Extra arguments go to the demo (e.g. --steps 3000).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTS_WERROR=OFF -DTS_SANITIZE=OFF
cmake --build build -j"$(nproc)"
echo
build/tessera demo "$@"
