# aarch64-linux-gnu.cmake - CMake toolchain file for cross-building Tessera for 64-bit Arm Linux
# (Kunpeng, Graviton, Ampere) with Debian's cross compiler (gcc-aarch64-linux-gnu,
# libc6-dev-arm64-cross). Tests run under user-mode QEMU (qemu-user), so `ctest` works on an
# x86-64 build machine. There are no arm64 builds of jansson or pcre2 here, so use it together
# with -DTS_CORE_ONLY=ON:
#
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DTS_CORE_ONLY=ON
#   cmake --build build-aarch64 && ctest --test-dir build-aarch64
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(TS_AARCH64_TRIPLE aarch64-linux-gnu)
set(TS_AARCH64_SYSROOT /usr/${TS_AARCH64_TRIPLE}) # Debian's multiarch-cross layout

set(CMAKE_C_COMPILER ${TS_AARCH64_TRIPLE}-gcc)
set(CMAKE_FIND_ROOT_PATH ${TS_AARCH64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER) # build tools are the host's
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)  # libraries and headers only the target's
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# -L: where qemu finds the aarch64 dynamic loader and libc.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L ${TS_AARCH64_SYSROOT})
