#!/usr/bin/env bash
# Builds Sparge and runs every test that this machine can run:
#   1. a CPU-only build (no CUDA toolkit used) and all CPU tests;
#   2. when nvcc is present, a build with the CUDA backend (sm_80 + sm_90a), whose CPU tests must
#      still pass on a machine without a GPU driver, and whose GPU tests skip with a message there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/setup.sh"
export SPARGE_TEST_LEVEL="${SPARGE_TEST_LEVEL:-1}"

echo "== CPU-only build"
bash "$root/scripts/build.sh" "$root/build/cpu" -DSPARGE_WITH_CUDA=OFF
(cd "$root/build/cpu" && ctest --output-on-failure -j2 -L cpu)

if command -v nvcc >/dev/null 2>&1 && [ "${SPARGE_SKIP_CUDA:-0}" != 1 ]; then
  echo "== CUDA build ($(nvcc --version | tail -1))"
  bash "$root/scripts/build.sh" "$root/build/cuda" -DSPARGE_WITH_CUDA=ON -DSPARGE_BUILD_BENCH=OFF
  (cd "$root/build/cuda" && ctest --output-on-failure -j2)
else
  echo "== CUDA build skipped (no nvcc on PATH)"
fi
bash "$root/scripts/test_python.sh"  # the PyTorch package: pip install . then pytest
SPARGE_SKIP_INSTALL=1 PYTHON="${SPARGE_VENV:-$root/.venv}/bin/python" bash "$root/bench/report.sh" --cpu --out "$(mktemp -d)/report"  # evaluation report, small version (docs/results.md)
