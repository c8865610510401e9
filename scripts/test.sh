#!/usr/bin/env bash
# test.sh - builds Tessera and runs every test twice: an optimized build with warnings as errors
# (build/), then a build with AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/;
# RelWithDebInfo, because Debug makes the larger tests too slow); then, where the cross compiler and
# qemu-user are installed, an aarch64 cross build of the dependency-free core (build-aarch64/,
# TS_CORE_ONLY) whose tests run under qemu-aarch64. Every phase runs even when an
# earlier one failed (a test phase is skipped only when its build failed), the time of each is
# printed, and the exit code is nonzero when anything failed. CI runs this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

jobs="$(nproc)"
results=()
failed=0

# phase NAME COMMAND...: runs the command, records its time and whether it passed.
phase() {
  local name="$1"
  shift
  echo
  echo "==== $name"
  local start end status=0
  start="$(date +%s.%N)"
  "$@" || status=$?
  end="$(date +%s.%N)"
  local secs
  secs="$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')"
  if [ "$status" -eq 0 ]; then
    results+=("$(printf '%-32s %8ss  ok' "$name" "$secs")")
  else
    results+=("$(printf '%-32s %8ss  FAILED (exit %d)' "$name" "$secs" "$status")")
    failed=1
  fi
  return "$status"
}

build() { # build DIR CMAKE_ARGS...
  local dir="$1"
  shift
  cmake -S . -B "$dir" "$@" && cmake --build "$dir" -j"$jobs"
}

run_tests() { # run_tests DIR
  (cd "$1" && ctest --output-on-failure -j"$jobs")
}

skipped() { # skipped NAME [WHY]
  results+=("$(printf '%-32s %9s  skipped (%s)' "$1" "-" "${2:-its build failed}")")
}

phase "install dependencies" scripts/install-deps.sh --tests || true

if phase "build (Release, -Werror)" build build -DCMAKE_BUILD_TYPE=Release -DTS_WERROR=ON -DTS_SANITIZE=OFF; then
  phase "test (Release)" run_tests build || true
else
  skipped "test (Release)"
fi

# allocator_may_return_null: an allocation too large for the machine returns NULL as it does
# without ASan, so the tests of clean out-of-memory errors run here too.
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
if phase "build (ASan+UBSan, -Werror)" build build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTS_WERROR=ON -DTS_SANITIZE=ON; then
  phase "test (ASan+UBSan)" run_tests build-asan || true
else
  skipped "test (ASan+UBSan)"
fi

# aarch64 servers (Kunpeng, Graviton): the core library, graph and CPU backend (NEON GEMM tier)
# cross-compiled and their tests run under user-mode QEMU (cmake/aarch64-linux-gnu.cmake).
if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then
  if phase "aarch64 build" build build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
    -DTS_CORE_ONLY=ON -DCMAKE_BUILD_TYPE=Release -DTS_WERROR=ON; then
    # TS_TEST_QUICK: under emulation test_gemm gives its lower (generic) tier fewer shapes and
    # test_fast_kernels times a 128^3 matmul instead of 512^3.
    TS_TEST_QUICK=1 phase "aarch64 tests (qemu)" run_tests build-aarch64 || true
  else
    skipped "aarch64 tests (qemu)"
  fi
else
  echo
  echo "==== aarch64 build, aarch64 tests (qemu)"
  echo "skipped: aarch64-linux-gnu-gcc or qemu-aarch64 not installed (gcc-aarch64-linux-gnu, qemu-user)"
  skipped "aarch64 build" "no aarch64-linux-gnu-gcc/qemu-aarch64"
  skipped "aarch64 tests (qemu)" "no aarch64-linux-gnu-gcc/qemu-aarch64"
fi

echo
echo "==== summary"
printf '%s\n' "${results[@]}"
if [ "$failed" -ne 0 ]; then
  echo "test.sh: FAILED"
  exit 1
fi
echo "test.sh: all phases passed"
