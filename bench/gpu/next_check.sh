#!/usr/bin/env bash
# The device run stop 29 left for the next session (~5 min), with binaries built here: pack them
# with
#   tar czf .devpack/bins.tgz -C build-q libsparge_c.so -C tests sparge_gpu_tests
# (.devpack ignored by .git/info/exclude, named in the call's carry), then on the device
#   bash bench/gpu/next_check.sh <commit>
# It runs:
#   1. every C++ GPU test;
#   2. the exact hd-64 Stage 2 at 8K, not causal, sparsity 0.9, which took 0.71-0.75 ms on the
#      H100 on 2026-12-05 against 0.23 ms on the H200 the day before (same seeded mask): the
#      bench in two fresh processes, first thing on the device, hd 128 beside it as a control;
#   3. bench_window.py at N 32K, W 512 and 4096 (issue 12: a window layer's rate per kept tile
#      against the dense kernel's, and FlexAttention with the same window, recompiled per
#      window since its W 4096 rows of 2026-12-04 were invalid);
#   4. issue 12's Gemma 3 run again with every run timed without statistics (--eager);
#   5. issue 14's two unmeasured decode cases: chunked prefill (256 query rows against 128K
#      keys) and batch 1 (one query row per head: where split-KV should fill the GPU).
# At most 8 files come back: logs and records in $OUT (8 here).
source bench/gpu/device_prelude.sh
install_package_in_background
for run in 1 2; do
  for hd in 64 128; do
    timeout 60 python3 bench/gpu/bench_attention.py --lib /tmp/bins/libsparge_c.so \
      --commit "$C" --seqs 8192 --sparsities 0,0.9 --head-dim $hd --kernels auto,sm80 \
      --quant-int8 --no-flex --out-dir /tmp --results-dir /tmp --tag "d$hd-run$run" \
      2>&1 | grep -v '^{' | grep -E "False" >> "$OUT/rerun_8k_$C.log"
    el "8K hd $hd run $run rc=${PIPESTATUS[0]}"
  done
done
cat "$OUT/rerun_8k_$C.log"
cat /tmp/*d64-run*.jsonl /tmp/*d128-run*.jsonl > "$OUT/rerun_8k_$C.jsonl" 2>/dev/null
timeout 100 /tmp/bins/sparge_gpu_tests > "$OUT/gpu_tests_$C.log" 2>&1
el "gpu tests rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gpu_tests_$C.log" | tr '\n' ' ')"
grep -E 'Failure' -A4 "$OUT/gpu_tests_$C.log" | head -30
timeout 150 python3 bench/gpu/bench_window.py --lib /tmp/bins/libsparge_c.so --commit "$C" \
  --seqs 32768 --out-dir "$OUT" --tag "window-$C" > /tmp/window.log 2>&1
el "window rc=$?"; grep -v '^{' /tmp/window.log | tail -12  # its records: $OUT
wait $PIP; el "$(tail -1 /tmp/install.log)"
timeout 100 python3 bench/eval/gemma_window.py --random-weights --device cuda --tokens 8192 \
  --eager --commit "$C" --out "$OUT/gemma3_window_$C.jsonl" > "$OUT/gemma3_window_$C.log" 2>&1
el "gemma rc=$?"; tail -14 "$OUT/gemma3_window_$C.log"
run_decode_benches "--rows 256" "--batch 1"
