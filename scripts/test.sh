#!/usr/bin/env bash
# Builds Sparge and runs every test that this machine can run:
#   1. a CPU-only build (no CUDA toolkit used) and all CPU tests;
#   2. when nvcc is present, a build with the CUDA backend (sm_80 + sm_90a), whose CPU tests must
#      still pass on a machine without a GPU driver, and whose GPU tests skip with a message there;
#   3. the Python package's tests and the small evaluation report;
#   4. scripts/sanitize.sh: the CPU tests under ASan + UBSan, then each fuzz target for a fixed
#      seed and count (reproducible; SPARGE_FUZZ_SECONDS=N explores instead). Last, so that
#      the stages above report first.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/build_configs.sh"
bash "$root/scripts/setup.sh"
export SPARGE_TEST_LEVEL="${SPARGE_TEST_LEVEL:-1}"

# ctest in build dir $1 (further arguments: ctest's); a run that finds no test fails, since ctest
# alone reports "No tests were found!!!" and succeeds.
run_ctest() {
  local dir="$1" count
  shift
  count="$(cd "$dir" && ctest -N "$@" | sed -n 's/^Total Tests: //p')"
  if [ "${count:-0}" -eq 0 ]; then
    echo "error: ctest finds no tests in $dir ($*); was it configured with SPARGE_BUILD_TESTS=OFF?"
    exit 1
  fi
  echo "== ctest $*: $count tests in $dir"
  (cd "$dir" && ctest --output-on-failure --no-tests=error -j2 "$@")
}

echo "== script tests (tests/scripts)"
for script_test in "$root"/tests/scripts/test_*.sh; do
  bash "$script_test"
done

echo "== CPU-only build"
bash "$root/scripts/build.sh" "$root/build/cpu" "${test_cpu_config[@]}"
run_ctest "$root/build/cpu" -L cpu

if command -v nvcc >/dev/null 2>&1 && [ "${SPARGE_SKIP_CUDA:-0}" != 1 ]; then
  echo "== CUDA build ($(nvcc --version | tail -1))"
  bash "$root/scripts/build.sh" "$root/build/cuda" "${test_cuda_config[@]}"
  run_ctest "$root/build/cuda"
else
  echo "== CUDA build skipped (no nvcc on PATH)"
fi
bash "$root/scripts/test_python.sh"  # the PyTorch package: pip install . then pytest
SPARGE_SKIP_INSTALL=1 PYTHON="${SPARGE_VENV:-$root/.venv}/bin/python" bash "$root/bench/report.sh" --cpu --out "$(mktemp -d)/report"  # evaluation report, small version (docs/results.md)

echo "== sanitizers and fuzz targets (scripts/sanitize.sh)"
bash "$root/scripts/sanitize.sh"
