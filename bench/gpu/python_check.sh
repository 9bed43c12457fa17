#!/usr/bin/env bash
# The Python package's GPU tests on the device machine (tests/python/test_cuda.py): builds the
# extension in place for sm_90a with the system g++ and runs pytest against python/.
# The device image's default /opt/gcc g++ links libstdc++ statically; an extension built with it
# mixes that copy with PyTorch's and segfaults at import (the same clash as libsparge_c.so's,
# bench/results/2026-12-04_NVIDIA-H200_main-a5b1449_check.md), hence CXX=/usr/bin/g++.
# Usage (repo root, on the device): bash bench/gpu/python_check.sh   -> $OUT/pytest.log
set -uo pipefail
out=${OUT:-/tmp/sparge_out}; mkdir -p "$out"
rm -rf python/build python/sparge/_C*.so
export SPARGE_WITH_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS="$(nproc)" CXX=/usr/bin/g++ CC=/usr/bin/gcc
timeout 200 python3 setup.py build_ext --inplace >"$out/ext.log" 2>&1
echo "extension rc=$? ($SECONDS s)"
PYTHONPATH=python timeout 200 python3 -m pytest -rs tests/python/test_cuda.py -p no:cacheprovider \
  >"$out/pytest.log" 2>&1
echo "pytest rc=$? ($SECONDS s)"; tail -5 "$out/pytest.log"
