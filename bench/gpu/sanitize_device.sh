#!/usr/bin/env bash
# compute-sanitizer on the GPU machine (issue 15): memcheck, racecheck, synccheck and initcheck
# on the GPU tests' small cases (attention on each kernel, Stage 1, token permutation), one line
# per (kernel, tool) in $OUT/sanitizers.md, logs under $LOGS (default /tmp/sparge_san). Carry `.devdeps` (bench/gpu/make_devdeps.sh).
# Usage (repo root): bash bench/gpu/sanitize_device.sh
set -uo pipefail
out=${OUT:-/tmp/sparge_out}
logs=${LOGS:-/tmp/sparge_san}
mkdir -p "$out" "$logs"
extra=()
if [ ! -d /usr/include/gtest ] && [ -d .devdeps/usr ]; then extra+=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr"); fi
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B build-san "${gen[@]}" -DSPARGE_WITH_CUDA=ON -DSPARGE_CUDA_ARCHS=90a -DSPARGE_BUILD_BENCH=OFF \
  -DSPARGE_BUILD_TOOLS=OFF "${extra[@]}" >"$logs/build.log" 2>&1 &&
  cmake --build build-san -j"$(nproc)" --target sparge_gpu_tests >>"$logs/build.log" 2>&1 ||
  { tail -30 "$logs/build.log"; exit 1; }
bin=./build-san/tests/sparge_gpu_tests
attention='Shapes/AttentionVsReference.MatchesWithinDtypeTolerance/0:Shapes/AttentionVsReference.MatchesWithinDtypeTolerance/1:Shapes/AttentionVsReference.MatchesWithinDtypeTolerance/8:AttentionEmptyRows.*'
others='TmaSm90.*:PermuteTokens.*:Shapes/PredictVsReference.MasksAgreeExceptAtTies/2'
{
echo "| kernel | tool | exit | summary |"
echo "|---|---|---|---|"
for kernel in sm90ws sm90 sm80 other; do
  filter=$attention; [ $kernel = other ] && filter=$others
  for tool in memcheck racecheck synccheck initcheck; do
    log="$logs/san_${kernel}_${tool}.log"
    SPARGE_CUDA_KERNEL=$([ $kernel = other ] && echo auto || echo $kernel) timeout 25 \
      compute-sanitizer --tool $tool --error-exitcode 3 $bin --gtest_filter="$filter" >"$log" 2>&1
    rc=$?
    tests=$(grep -E '^\[  PASSED  \]' "$log" | tr -s ' ' | tr '\n' ' ')
    echo "| $kernel | $tool | $rc | $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1 | sed 's/=* *//') ${tests} |"
  done
done
} | tee "$out/sanitizers.md"
