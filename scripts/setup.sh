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
[ -f /usr/include/x86_64-linux-gnu/cblas.h ] || [ -f /usr/include/cblas.h ] || \
  ls /usr/include/x86_64-linux-gnu/openblas*/cblas.h >/dev/null 2>&1 || need+=(libopenblas-dev)
[ -f /usr/include/png.h ] || need+=(libpng-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
