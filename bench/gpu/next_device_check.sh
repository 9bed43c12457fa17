#!/usr/bin/env bash
# Device check of the compact Stage-1 writer and Stage 1 reading key blocks in place (written
# 2026-12-05 without a GPU): every C++ GPU test (CudaCompactMask.* for the compact writer, the
# key-block tests for the in-place read), per-head thresholds beyond 256 heads (head chunks against
# one uniform call: equal outputs, time ratio), then bench_decode.py at B 1 and B 8 (128K keys,
# 32 query heads over 8 KV heads) with its whole decode steps. Carry .devpack (bins.tgz of this
# tree); the package is built on the device (~90 s).   bash bench/gpu/next_device_check.sh <commit>
source bench/gpu/device_prelude.sh
install_package_in_background
timeout 200 /tmp/bins/sparge_gpu_tests > "$OUT/gpu_tests_$C.log" 2>&1
el "gpu tests rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gpu_tests_$C.log" | tr '\n' ' ')"
grep -E '^\[  FAILED|Failure' -A6 "$OUT/gpu_tests_$C.log" | head -30
grep -E '^\[ compact \]' "$OUT/gpu_tests_$C.log"
timeout 120 python3 bench/gpu/bench_head_chunks.py --lib /tmp/bins/libsparge_c.so --commit "$C" \
  --out-dir "$OUT" > "$OUT/head_chunks_$C.log" 2>&1
el "head chunks rc=$?"; grep -v '^{' "$OUT/head_chunks_$C.log"
wait $PIP; el "$(tail -1 /tmp/install.log)"
run_decode_benches "--batch 1" ""
