#!/usr/bin/env bash
# One command on the GPU machine: build the CUDA backend (sm_90a only, all cores), then
#   test  : GPU tests + compute-sanitizer memcheck/racecheck on small cases
#   bench : bench_attention.py (records into bench/results/ and $OUT)
# Usage: bench/gpu/run_device.sh test|bench|all [commit]
set -uo pipefail
mode=${1:-all}
commit=${2:-unknown}
out=${OUT:-/tmp/sparge_out}
mkdir -p "$out"
extra=()
# GoogleTest may be missing on the device image: use the carried copy then.
if [ ! -d /usr/include/gtest ] && [ -d .devdeps/usr ]; then extra+=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr"); fi
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B build-dev "${gen[@]}" -DSPARGE_WITH_CUDA=ON -DSPARGE_CUDA_ARCHS=90a -DSPARGE_BUILD_BENCH=OFF \
  -DSPARGE_BUILD_TOOLS=OFF "${extra[@]}" >"$out/build.log" 2>&1 &&
  cmake --build build-dev -j"$(nproc)" --target sparge_gpu_tests sparge_c >>"$out/build.log" 2>&1
rc=$?
grep -E "spill|error" "$out/build.log" | sort -u | head -20
[ $rc -ne 0 ] && { tail -30 "$out/build.log"; exit $rc; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader

if [ "$mode" = test ] || [ "$mode" = all ]; then
  # The wgmma kernel (the default on sm_90), then the same tests on the mma.sync kernel.
  SPARGE_CUDA_KERNEL=sm80 ./build-dev/tests/sparge_gpu_tests >"$out/gpu_tests_sm80.log" 2>&1
  echo "gpu tests (SPARGE_CUDA_KERNEL=sm80) rc=$? : $(grep -E '^\[  (PASSED|FAILED) ' "$out/gpu_tests_sm80.log" | tr '\n' ' ')"
  grep -E "FAILED|Failure|Which is" "$out/gpu_tests_sm80.log" | head -10
  ./build-dev/tests/sparge_gpu_tests >"$out/gpu_tests.log" 2>&1
  rc=$?
  echo "gpu tests (default kernel) rc=$rc : $(grep -E '^\[  (PASSED|FAILED) ' "$out/gpu_tests.log" | tr '\n' ' ')"
  if [ $rc -ge 128 ]; then  # crashed: where?
    cuda-gdb -batch -ex run -ex bt --args ./build-dev/tests/sparge_gpu_tests >"$out/crash.log" 2>&1
    grep -E "^#|signal" "$out/crash.log" | head -20
  fi
  grep -E "^\[ (pv skip|end-to-end) \]|FAILED|^\[  PASSED|Failure|Which is" "$out/gpu_tests.log" | head -30
  small='Shapes/AttentionVsReference.MatchesWithinDtypeTolerance/1:Shapes/AttentionVsReference.MatchesWithinDtypeTolerance/8:PermuteTokens.*:AttentionEmptyRows.*:Shapes/PredictVsReference.MasksAgreeExceptAtTies/2'
  for tool in memcheck racecheck; do
    compute-sanitizer --tool $tool --error-exitcode 3 ./build-dev/tests/sparge_gpu_tests --gtest_filter="$small" \
      >"$out/sanitizer_$tool.log" 2>&1
    echo "compute-sanitizer $tool rc=$? : $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer_$tool.log" | tail -1)"
  done
fi

if [ "$mode" = bench ] || [ "$mode" = all ]; then
  PYTHONUNBUFFERED=1 timeout 540 python3 bench/gpu/bench_attention.py --lib build-dev/libsparge_c.so --commit "$commit" \
    --out-dir "$out" 2>&1 | tee "$out/bench.log" | tail -60
fi
