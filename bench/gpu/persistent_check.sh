#!/usr/bin/env bash
# One device call: sm90ws's persistent grid against its row grid (docs/cuda.md "The persistent
# grid"), as bench/results/2026-12-06_NVIDIA-H100_persistent-grid.md was measured (there from a
# copy of this script under .devpack/):
#   1. its GPU test (bit-equal to the row grid), then the whole suite on the persistent grid
#   2. compute-sanitizer memcheck / racecheck on small cases, persistent grid
#   3. bench_attention.py in both kernel orders (the kernel timed second may run at lower clocks):
#      bf16 B1 H32 hd128, N 4K/8K/32K, dense and causal, block sparsity 0 / 0.5 / 0.9, cuDNN beside
#   4. bench_window.py: W 512 / 4096 at N 8K / 32K on both grids, FlexAttention beside
# Needs the binaries of .devpack/bins.tgz (libsparge_c.so and sparge_gpu_tests built here for
# sm_90a: `tar cJf .devpack/bins.tgz -C <build> libsparge_c.so tests/sparge_gpu_tests
# --transform 's#tests/##'`; carry .devpack). About 80 s on an H100.
# Usage (repo root, on the device): bash bench/gpu/persistent_check.sh <commit>
source bench/gpu/device_prelude.sh "${1:?commit}"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
B=/tmp/bins
timeout -k 5 90 $B/sparge_gpu_tests --gtest_filter='*PersistentGrid*' > "$OUT/persistent-test.txt" 2>&1
el "persistent test rc=$?"
grep -E "^\[ info|OK \]|FAILED|PASSED|Failure|Expected|Which" "$OUT/persistent-test.txt" | head -20
mkdir -p "$OUT/att1" "$OUT/att2" "$OUT/win"
for order in 1 2; do
  kernels=sm90ws,sm90ws-persistent
  [ $order = 2 ] && kernels=sm90ws-persistent,sm90ws
  timeout -k 5 110 python3 bench/gpu/bench_attention.py --lib $B/libsparge_c.so --commit "$C" \
    --seqs 4096,8192,32768 --sparsities 0,0.5,0.9 --kernels $kernels --no-flex --reps 10 \
    --out-dir "$OUT/att$order" --results-dir "" --tag persistent-order$order > "$OUT/att$order.log" 2>&1
  el "bench_attention order $order ($kernels) rc=$?"
  grep -E "^\| [0-9]+ \| (True|False) \| (sparge|sdpa-cudnn)" "$OUT/att$order.log"
done
timeout -k 5 100 python3 bench/gpu/bench_window.py --lib $B/libsparge_c.so --commit "$C" \
  --kernels sm90ws,sm90ws-persistent --out-dir "$OUT/win" --tag persistent-window > "$OUT/win.log" 2>&1
el "bench_window rc=$?"; grep -E "^\||Error|differs" "$OUT/win.log"
SPARGE_CUDA_KERNEL=sm90ws-persistent timeout -k 5 110 $B/sparge_gpu_tests > "$OUT/gpu-tests-persistent.txt" 2>&1
el "suite on sm90ws-persistent rc=$?: $(grep -E '^\[  (PASSED|FAILED) ' "$OUT/gpu-tests-persistent.txt" | tr '\n' ' ')"
grep -E "FAILED|Failure" "$OUT/gpu-tests-persistent.txt" | head -10
small='*PersistentGrid.Small*:Shapes/AttentionVsReference.MatchesWithinDtypeTolerance/1:AttentionEmptyRows.*'
for tool in memcheck racecheck; do
  SPARGE_CUDA_KERNEL=sm90ws-persistent timeout -k 5 60 compute-sanitizer --tool $tool --error-exitcode 3 \
    $B/sparge_gpu_tests --gtest_filter="$small" > "$OUT/sanitizer-$tool.txt" 2>&1
  el "compute-sanitizer $tool rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer-$tool.txt" | tail -1)" \
     "$(grep -c '^\[       OK' "$OUT/sanitizer-$tool.txt") ok"
done
el done
