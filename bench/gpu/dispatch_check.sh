#!/usr/bin/env bash
# Device check of the dispatch changes of 2026-12-05 not yet run on a GPU: the decode default
# (split-KV for at most 64 (batch, query head) rows, src/cuda/dispatch.cu takes_decode_kernel),
# and, for a tree with CUDA row chunks sharing one build of the key blocks (stop 30's closing
# note), CudaRowChunks.* (chunked calls against the whole call bit for bit). Every C++ GPU test,
# then bench_decode.py at B 1 and B 8 (128K keys, 32 query heads over 8 KV heads, hd 128:
# "sparge-exact-default" should match the split-KV row at B 1 and the tensor-core row at B 8)
# and bench_long.py at 128K, 256K and 1M tokens (cut calls; compare with ..._long-3ead0a5.jsonl
# of the same GPU type), with Stage 1 and the kernel timed apart (stage1_ms, kernel_ms).
# Carry .devpack (bins.tgz: libsparge_c.so + sparge_gpu_tests of the tree);
# the package is built on the device (~90 s).   bash bench/gpu/dispatch_check.sh <commit>
source bench/gpu/device_prelude.sh
install_package_in_background
timeout 150 /tmp/bins/sparge_gpu_tests > "$OUT/gpu_tests_$C.log" 2>&1
el "gpu tests rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gpu_tests_$C.log" | tr '\n' ' ')"
grep -E 'Failure' -A4 "$OUT/gpu_tests_$C.log" | head -20
wait $PIP; el "$(tail -1 /tmp/install.log)"
run_decode_benches "--batch 1" ""
timeout 330 python3 bench/gpu/bench_long.py --commit "$C" --tokens 131072 262144 1048576 --rows 16 \
  --dense-max 0 --sdpa-max 131072 --out "$OUT/long_$C.jsonl" > "$OUT/long_$C.log" 2>&1
el "long rc=$?"; grep -v '^{' "$OUT/long_$C.log" | tail -12
