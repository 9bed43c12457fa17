#!/usr/bin/env bash
# Device check of Stage 1's sampled_rows estimate on the tensor cores (sampled_rows.cuh): every
# C++ GPU test, compute-sanitizer memcheck and racecheck on the tests that run the estimate, then
# bench_stage1.py --error-target (every block estimated: the error target and sampled_rows with 4
# and 16 rows per block, TopCdf 0.98, at 4K, 8K and 32K, hd 128 and 64, beside the dense kernel).
# Binaries from .devpack/bins.tgz (built here, carried). Returns summary.txt, the bench's JSON
# Lines file and logs.tgz.
#   bash bench/gpu/sampled_rows_check.sh <commit>
source bench/gpu/device_prelude.sh
B=/tmp/bins; L=/tmp/sr_logs; mkdir -p "$L"
S="$OUT/summary.txt"
{
timeout 150 $B/sparge_gpu_tests > "$L/gpu_tests.log" 2>&1
el "gpu tests rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$L/gpu_tests.log" | tr '\n' ' ')"
grep -hE '^\[  FAILED|Failure' -A6 "$L/gpu_tests.log" | head -40
grep -E '^\[ (sampled_rows|end-to-end) \]' "$L/gpu_tests.log"
filter='*SampledRows*:*DenseMask*:*KeyLength*'
for tool in memcheck racecheck; do
  timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 $B/sparge_gpu_tests \
    --gtest_filter="$filter" > "$L/sanitizer_$tool.log" 2>&1
  el "compute-sanitizer $tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$L/sanitizer_$tool.log" | tail -1)"
done
timeout 300 python3 bench/gpu/bench_stage1.py --lib $B/libsparge_c.so --commit "$C" --error-target \
  --seqs 4096,8192,32768 --head-dims 128,64 --sample-rows 4,16 --out-dir "$OUT" --reps 5 > "$L/stage1.log" 2>&1
el "bench_stage1 --error-target rc=$?"
grep -E '^\|' "$L/stage1.log"
} 2>&1 | tee "$S"
tar czf "$OUT/logs.tgz" -C /tmp sr_logs
