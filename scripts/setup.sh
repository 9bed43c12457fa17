#!/usr/bin/env bash
# Installs what building and testing Sparge needs, from Debian packages, when it is missing.
#   cmake, g++          build
#   libgtest-dev        GoogleTest (tests)
#   libbenchmark-dev    Google Benchmark (CPU benchmarks)
#   libopenblas-dev     OpenBLAS SGEMM: the machine's reference rate in the CPU benchmarks
#   libpng-dev          PNG pictures of block masks (`sparge mask`)
#   libomp / OpenMP     comes with g++ (libgomp)
#   clang, libclang-rt-dev, libomp-dev   scripts/sanitize.sh's fuzz targets (clang's libFuzzer
#                       runtime; clang's OpenMP runtime, since the library uses OpenMP)
# Each check looks where the build itself finds the file, so on a provisioned machine this never
# calls apt-get: it then works offline and where apt-get is absent.
set -euo pipefail

have_header() {
  local dir
  for dir in /usr/include /usr/local/include; do
    [ -f "$dir/$1" ] && return 0
  done
  return 1
}

# lib$1.so in the linker's directories, one level below them too (Debian's alternatives put
# OpenBLAS in /usr/lib/x86_64-linux-gnu/openblas-pthread/), or in ldconfig's cache.
have_lib() {
  local file cache
  for file in /usr/lib/lib"$1".so /usr/lib/*/lib"$1".so /usr/lib/*/*/lib"$1".so \
              /usr/lib64/lib"$1".so /usr/local/lib/lib"$1".so /usr/local/lib/*/lib"$1".so; do
    [ -e "$file" ] && return 0
  done
  cache="$( (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null || true)"
  [[ "$cache" == *"lib$1.so "* ]]
}

missing() {  # prints the Debian packages whose files are not found; $1: required | optional
  if [ "$1" = required ]; then
    command -v cmake >/dev/null || echo cmake
    command -v g++ >/dev/null || echo g++
    have_header gtest/gtest.h || echo libgtest-dev
    have_header benchmark/benchmark.h || echo libbenchmark-dev
    command -v clang++ >/dev/null || echo clang
    compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a" >/dev/null ||
      echo libclang-rt-dev
    have_lib omp || echo libomp-dev
  else
    # The header alone is not enough: netlib's reference BLAS also ships cblas.h, and a benchmark
    # linked against it reports 3 GFLOP/s instead of the machine's SGEMM rate.
    have_lib openblas || echo libopenblas-dev
    have_header png.h || echo libpng-dev  # without it `sparge mask` writes PGM
  fi
}

mapfile -t required < <(missing required)
mapfile -t optional < <(missing optional)
need=("${required[@]}" "${optional[@]}")
[ ${#need[@]} -eq 0 ] && exit 0

echo "setup: missing ${need[*]}"
if ! command -v apt-get >/dev/null; then
  echo "setup: apt-get is not available here; install these (Debian package names) with the" \
       "system's package manager: ${need[*]}" >&2
  if [ ${#required[@]} -gt 0 ]; then
    echo "setup: error: the build needs ${required[*]}" >&2
    exit 1
  fi
  echo "setup: continuing without ${optional[*]} (optional)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || {
    echo "setup: error: not root and no sudo; as root run: apt-get install ${need[*]}" >&2
    exit 1; }
  SUDO="sudo"
fi
echo "setup: installing ${need[*]}"
$SUDO apt-get update -qq || echo "setup: apt-get update failed; trying the package lists at hand"
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" || {
  echo "setup: error: apt-get install ${need[*]} failed" >&2
  exit 1; }
# A check that still fails after its package is installed would call apt-get on every run.
mapfile -t still < <(missing required; missing optional)
if [ ${#still[@]} -gt 0 ]; then
  echo "setup: warning: ${still[*]} installed but still not found where the build looks" >&2
fi
