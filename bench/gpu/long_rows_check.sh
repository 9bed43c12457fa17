#!/usr/bin/env bash
# Device check of Stage 1's long-row selection (select_long.cuh; issue 14, a million tokens):
# every C++ GPU test of the working tree (CudaLongRows.* compare it with the shared-memory path
# bit for bit, in narrow bands and on ties), then bench_long_rows.py: Stage 1 alone and the whole
# call at 256K and 1M tokens (B 1, H 8, hd 128), the carried base library against the tree's,
# masks compared, at 256K with every row forced to the long-row path, and on smooth inputs at
# 256K. Carry .devpack:
# bins.tgz (libsparge_c.so + sparge_gpu_tests of the tree) and ab.tgz (base.so: the library
# before the change).   bash bench/gpu/long_rows_check.sh <commit>
source bench/gpu/device_prelude.sh
mkdir -p /tmp/ab && tar xzf .devpack/ab.tgz -C /tmp/ab
timeout 200 /tmp/bins/sparge_gpu_tests > "$OUT/gpu_tests_$C.log" 2>&1
el "gpu tests rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gpu_tests_$C.log" | tr '\n' ' ')"
grep -E '^\[  FAILED|Failure' -A4 "$OUT/gpu_tests_$C.log" | head -20
grep -E '^\[ long rows \]' "$OUT/gpu_tests_$C.log" | grep -v ' equal$' | head -5
grep -cE '^\[ long rows \].* equal$' "$OUT/gpu_tests_$C.log"
libs=${LIBS:-"base=/tmp/ab/base.so work=/tmp/bins/libsparge_c.so"}  # LIBS: other name=path pairs
# shellcheck disable=SC2086  # two name=path words
timeout 330 python3 bench/gpu/bench_long_rows.py --libs $libs --commit "$C" \
  --out "$OUT/long_rows_$C.jsonl" 2> "$OUT/long_rows_$C.log"
el "long rows rc=$?"
# shellcheck disable=SC2086
timeout 120 python3 bench/gpu/bench_long_rows.py --libs $libs --commit "$C" --tokens 262144 \
  --force-long-rows --no-whole-call --out "$OUT/long_rows_forced_$C.jsonl" \
  2> "$OUT/long_rows_forced_$C.log"
el "forced rc=$?"
# shellcheck disable=SC2086
timeout 120 python3 bench/gpu/bench_long_rows.py --libs $libs --commit "$C" --tokens 262144 \
  --workload smooth --out "$OUT/long_rows_smooth_$C.jsonl" 2> "$OUT/long_rows_smooth_$C.log"
el "smooth rc=$?"
cat "$OUT"/long_rows_*"$C".log | grep -v '^{' | tail -40
