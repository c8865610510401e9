#!/usr/bin/env bash
# install-deps.sh - installs the Debian/Ubuntu packages Tessera's build and tests need today
# (a C11 compiler with AddressSanitizer/UBSan, make, CMake >= 3.18), and nothing when they are
# all present: each is checked first (command -v / dpkg -s), and apt-get - the only thing here
# that touches the network - runs only for what is missing. Runs as root, or through sudo.
# With --tests it also installs what only the tests need (TEST_TOOLS below); scripts/test.sh,
# which CI runs, passes it, scripts/quickstart.sh does not. Safe to run again.
set -euo pipefail

with_tests=0
case "${1:-}" in
  "") ;;
  --tests) with_tests=1 ;;
  *)
    echo "usage: install-deps.sh [--tests]" >&2
    exit 2
    ;;
esac

# "command package" pairs: the package is needed when the command is missing.
readonly TOOLS=(
  "gcc gcc"
  "make make"
  "cmake cmake"
  "pkg-config pkg-config"
  "aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu"
  "qemu-aarch64 qemu-user"
)
# The aarch64 cross compiler and qemu-user run the conformance suite on the NEON kernels.
# Packages without a command of their own: C library headers, jansson (JSON), PCRE2 (the
# tokenizer's pre-tokenizer regexes), libmicrohttpd (the HTTP server).
readonly LIBRARIES=(libc6-dev libjansson-dev libpcre2-dev libmicrohttpd-dev libc6-dev-arm64-cross)
# Test-only "command package" pairs: tests/test_chat_page.py drives the chat page of
# `tessera serve` in headless Chromium over the DevTools protocol, with python3's standard library
# alone (that test reports SKIP where chromium is missing).
readonly TEST_TOOLS=(
  "python3 python3"
  "chromium chromium"
)
# Sanitizer runtimes (Debian 12 names), needed only when a sanitized program fails to link.
readonly SANITIZER_LIBS=(libasan8 libubsan1)

tools=("${TOOLS[@]}")
if [ "$with_tests" -eq 1 ]; then
  tools+=("${TEST_TOOLS[@]}")
fi
missing=()
for pair in "${tools[@]}"; do
  read -r cmd pkg <<<"$pair"
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
if command -v dpkg >/dev/null 2>&1; then
  for pkg in "${LIBRARIES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
fi

# gcc normally brings the sanitizer runtimes along; check by building a sanitized program.
sanitizers_link() {
  local tmp
  tmp="$(mktemp -d)"
  printf 'int main(void) { return 0; }\n' >"$tmp/probe.c"
  local ok=0
  gcc -fsanitize=address,undefined "$tmp/probe.c" -o "$tmp/probe" >/dev/null 2>&1 || ok=1
  rm -rf "$tmp"
  return "$ok"
}
if command -v gcc >/dev/null 2>&1 && ! sanitizers_link; then
  missing+=("${SANITIZER_LIBS[@]}")
fi

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: everything needed is installed"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: apt-get not found; please install: ${missing[*]}" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install-deps: not root and sudo not found; as root, run: apt-get install ${missing[*]}" >&2
  exit 1
fi
# env passes DEBIAN_FRONTEND through sudo, which would otherwise drop it.
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
