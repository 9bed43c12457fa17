#!/usr/bin/env bash
# Device check of what is still unverified on a GPU after stop 27, in one call (~7 min) with
# binaries built here: pack them with
#   tar czf .devpack/bins.tgz -C build-q libsparge_c.so -C tests sparge_gpu_tests
# (.devpack ignored by .git/info/exclude, named in the call's carry), then on the device
#   bash bench/gpu/pending_check.sh <commit>
# It runs:
#   1. every C++ GPU test, and under memcheck the row chunks (CudaRowChunks.*: sparse_attention
#      cut into query-row chunks equals the whole call bit for bit; its first run stopped on the
#      test's own bug) and the long rows (CudaLongRows.EqualThe*);
#   2. the Python suite but the distributed tests (pip install of the package on the device,
#      in the background while the C++ tests run; the compact-mask CUDA test was rewritten);
#   3. bench_long.py at 128K / 256K / 1M: the plain call's peak memory beyond Q+K+V
#      (`workspace_bytes` = mask + Stage-1 scratch, issue 14's <= 10% target, now in row chunks);
#   4. bench_decode.py: the union of each KV head's kept blocks against the copy bandwidth
#      (issue 14's decode target, which the per-query-head count of 2026-12-05 could not show);
#   5. issue 12's Gemma 3 numbers on the GPU: bench/eval/gemma_window.py with Gemma 3 270M's
#      configuration and random weights (the GGUF cannot be carried), 8192 tokens, bf16: every
#      layer served or not, attention time per layer type against PyTorch's masked SDPA, logits.
# The C++ GPU tests of step 1 include quant kInt8's (QuantAttention/FusedStage1 '*_int8') and
# dense masks' (DenseMask*); bench/gpu/int8_dense_mask_check.sh runs those under memcheck and
# times kInt8.
# Logs and records go to $OUT.
source bench/gpu/device_prelude.sh
install_package_in_background
timeout 100 /tmp/bins/sparge_gpu_tests > "$OUT/gpu_tests_$C.log" 2>&1
el "gpu tests rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gpu_tests_$C.log" | tr '\n' ' ')"
grep -E 'Failure|\[ (row chunks|workspace) \]' -A4 "$OUT/gpu_tests_$C.log" | head -30
timeout 60 compute-sanitizer --tool memcheck /tmp/bins/sparge_gpu_tests \
  --gtest_filter='CudaRowChunks.*:CudaLongRows.EqualThe*' > "$OUT/memcheck_$C.log" 2>&1
el "memcheck rc=$? $(grep -E 'ERROR SUMMARY|^\[  (PASSED|FAILED)' "$OUT/memcheck_$C.log" | tr '\n' ' ')"
wait $PIP; el "$(tail -1 /tmp/install.log)"
(cd tests/python && timeout 150 python3 -m pytest -q -p no:cacheprovider -rs \
  --ignore=test_distributed.py > "$OUT/pytest_$C.log" 2>&1)
el "pytest rc=$? $(tail -1 "$OUT/pytest_$C.log")"; grep -E "^FAILED|^E  " "$OUT/pytest_$C.log" | head -12
timeout 150 python3 bench/gpu/bench_long.py --commit "$C" --out "$OUT/long_$C.jsonl" \
  > "$OUT/long_$C.log" 2>&1
el "long rc=$?"; grep -v '^{' "$OUT/long_$C.log" | tail -16
timeout 90 python3 bench/gpu/bench_decode.py --commit "$C" --reps 10 --out "$OUT/decode_$C.jsonl" \
  > "$OUT/decode_$C.log" 2>&1
el "decode rc=$?"; grep -v '^{' "$OUT/decode_$C.log" | tail -8
timeout 150 python3 bench/eval/gemma_window.py --random-weights --device cuda --tokens 8192 \
  --commit "$C" --out "$OUT/gemma3_window_$C.jsonl" > "$OUT/gemma3_window_$C.log" 2>&1
el "gemma rc=$?"; tail -12 "$OUT/gemma3_window_$C.log"
