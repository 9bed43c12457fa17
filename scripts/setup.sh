#!/usr/bin/env bash
# Installs what building and testing Sparge needs, from Debian packages, when it is missing.
#   cmake, g++          build
#   libgtest-dev        GoogleTest (tests)
#   libbenchmark-dev    Google Benchmark (CPU benchmarks)
#   libopenblas-dev     OpenBLAS SGEMM: the machine's reference rate in the CPU benchmarks
#   libpng-dev          PNG pictures of block masks (`sparge mask`)
#   libomp / OpenMP     comes with g++ (libgomp)
set -euo pipefail
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
[ -f /usr/include/gtest/gtest.h ] || need+=(libgtest-dev)
[ -f /usr/include/benchmark/benchmark.h ] || need+=(libbenchmark-dev)
# The header alone is not enough: netlib's reference BLAS also ships cblas.h, and a benchmark
# linked against it reports 3 GFLOP/s instead of the machine's SGEMM rate.
ls /usr/lib/*/libopenblas.so /usr/lib/libopenblas.so >/dev/null 2>&1 || need+=(libopenblas-dev)
[ -f /usr/include/png.h ] || need+=(libpng-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
