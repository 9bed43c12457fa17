#!/usr/bin/env bash
# Device check of the key side pooled once per call across row chunks: the row-chunk GPU tests
# first (bit-equality of chunked and whole calls, incl. chunks that leave the key side unused and
# a later one that pools it), then whole chunked calls of a base library against this tree's
# (bench_row_chunks.py: chunked, forced whole, SDPA), then the other GPU tests.
# Usage (repo root, device call with carry .devpack; .devpack/bins.tgz = this tree's
# libsparge_c.so + sparge_gpu_tests, .devpack/ab.tgz = base_c.so):
#   bash bench/gpu/row_chunks_check.sh <commit>
source bench/gpu/device_prelude.sh
L=$OUT/logs; mkdir -p "$L"
mkdir -p /tmp/ab && tar xf .devpack/ab.tgz -C /tmp/ab
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 60 /tmp/bins/sparge_gpu_tests --gtest_filter='*RowChunks*' > "$L/rowchunks.log" 2>&1
el "row chunk tests rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$L/rowchunks.log" | tr '\n' ' ')"
grep -E "row chunks \]|FAILED|Failure" "$L/rowchunks.log" | head -12
for v in base:/tmp/ab/base_c.so work:/tmp/bins/libsparge_c.so; do
  IFS=: read -r n lib <<< "$v"
  timeout 90 python3 bench/gpu/bench_row_chunks.py --lib "$lib" --commit "$C-$n" --out-dir "$OUT" \
    --reps 8 > "$L/rc_$n.log" 2>&1
  el "bench $n rc=$?"; grep -E '^\|' "$L/rc_$n.log" | grep -v "^|---"
done
timeout 120 /tmp/bins/sparge_gpu_tests --gtest_filter='-*RowChunks*' > "$L/gpu_tests.log" 2>&1
el "other gpu tests rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$L/gpu_tests.log" | tr '\n' ' ')"
grep -hE '^\[  FAILED' "$L/gpu_tests.log" | head
tar czf "$OUT/row_chunks_logs.tgz" -C "$OUT" logs; rm -rf "$L"
