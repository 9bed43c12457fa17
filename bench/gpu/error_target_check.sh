#!/usr/bin/env bash
# One H200 call for the CUDA error target (error_target_sample.cuh, error_target.cuh): build
# (sm_90a, fast build: Stage 1 compiles whole, the attention kernels only at d128 bf16 non-causal),
# the Stage-1 GPU tests (the error target against the CPU, sampled_rows, pooled), compute-sanitizer
# memcheck / racecheck / synccheck on three error-target cases, then the error target's Stage 1
# alone with every block estimated (bench_stage1.py --error-target: random and smooth inputs,
# hd 128 and 64, N 8K and 32K, H 32, bf16) beside the dense kernel. FULL_BUILD=1 builds every
# sm_90a attention instance instead and adds the end-to-end test (sparse_attention with the error
# target against the reference). Usage (repo root, device call with carry .devdeps):
#   bash bench/gpu/error_target_check.sh <commit name>
# Records go to $OUT/error_target.tgz, the tables to $OUT/summary.md.
set -uo pipefail
name=${1:?commit name}
final=${OUT:-/tmp/sparge_out}; out=$(mktemp -d); logs=$out/logs; mkdir -p "$final" "$logs"
extra=()
if [ ! -d /usr/include/gtest ] && [ -d .devdeps/usr ]; then extra+=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr"); fi
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
filter='*ErrorTarget*:*SampledRows*:*Predict*'
if [ "${FULL_BUILD:-0}" = 1 ]; then fast=OFF; else fast=ON; filter="$filter:-ErrorTargetEndToEnd.*"; fi
cmake -S . -B build-et "${gen[@]}" -DSPARGE_WITH_CUDA=ON -DSPARGE_CUDA_ARCHS=90a -DSPARGE_FAST_BUILD=$fast \
  -DSPARGE_BUILD_BENCH=OFF -DSPARGE_BUILD_TOOLS=OFF "${extra[@]}" >"$logs/build.log" 2>&1 &&
  timeout -k 5 300 cmake --build build-et -j"$(nproc)" --target sparge_gpu_tests sparge_c >>"$logs/build.log" 2>&1
rc=$?
echo "build rc=$rc ($SECONDS s, fast build $fast)"; grep -hE "spill|error" "$logs/build.log" | sort -u | head -10
[ $rc -ne 0 ] && { tail -30 "$logs/build.log"; tar -czf "$final/error_target.tgz" -C "$out" .; exit $rc; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
bin=./build-et/tests/sparge_gpu_tests
timeout -k 5 120 $bin --gtest_filter="$filter" >"$logs/gpu_tests.log" 2>&1
echo "gpu tests rc=$? ($SECONDS s): $(grep -E '^\[  (PASSED|FAILED) ' "$logs/gpu_tests.log" | tr '\n' ' ')"
grep -E "^\[  FAILED  \]|Failure|Which is|Expected|head [0-9]+" "$logs/gpu_tests.log" | sort -u | head -16
grep -E "^\[ error target \]|^\[ end-to-end \]" "$logs/gpu_tests.log"
# /0: Nq = Nk = 1, hd 64; /1: causal GQA, Nk 1000 (ragged tiles), hd 128; /2: fp16, bottom-right
# causal, sink, gate on, Nk 129 (a one-key last block).
cases='Shapes/ErrorTargetVsCpu.SameChoiceAndMask/0:Shapes/ErrorTargetVsCpu.SameChoiceAndMask/1:Shapes/ErrorTargetVsCpu.SameChoiceAndMask/2'
for tool in memcheck racecheck synccheck; do
  timeout -k 5 60 compute-sanitizer --tool $tool --error-exitcode 3 $bin --gtest_filter="$cases" \
    >"$logs/sanitizer_$tool.log" 2>&1
  echo "compute-sanitizer $tool rc=$? ($SECONDS s): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$logs/sanitizer_$tool.log" | tail -1)"
done
PYTHONUNBUFFERED=1 timeout -k 5 150 python3 bench/gpu/bench_stage1.py --lib build-et/libsparge_c.so \
  --commit "$name" --error-target --seqs 8192,32768 --head-dims 128,64 --out-dir "$out" \
  >"$logs/stage1_error_target.log" 2>&1
echo "stage 1 error target rc=$? ($SECONDS s)"; grep -E '^\||Error|error' "$logs/stage1_error_target.log"
{ grep -hE '^\|' "$logs/stage1_error_target.log"; grep -E "^\[ error target \]" "$logs/gpu_tests.log"; } \
  > "$final/summary.md"
tar -czf "$final/error_target.tgz" -C "$out" .
