#!/usr/bin/env bash
# Device check of the decode dispatch's default (split-KV for at most 64 (batch, query head)
# rows, src/cuda/dispatch.cu uses_decode_kernel): every C++ GPU test, then bench_decode.py at
# B 1 and B 8 (128K keys, 32 query heads over 8 KV heads, hd 128), where "sparge-exact-default"
# should match the split-KV row at B 1 and the tensor-core row at B 8. Carry .devpack
# (bins.tgz: libsparge_c.so + sparge_gpu_tests of the tree); the package is built on the device.
#   bash bench/gpu/decode_default_check.sh <commit>
source bench/gpu/device_prelude.sh
install_package_in_background
timeout 150 /tmp/bins/sparge_gpu_tests > "$OUT/gpu_tests_$C.log" 2>&1
el "gpu tests rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gpu_tests_$C.log" | tr '\n' ' ')"
grep -E 'Failure' -A4 "$OUT/gpu_tests_$C.log" | head -20
wait $PIP; el "$(tail -1 /tmp/install.log)"
i=0
for extra in "--batch 1" ""; do
  i=$((i + 1))
  timeout 90 python3 bench/gpu/bench_decode.py --commit "$C" --reps 10 $extra \
    --out "/tmp/decode_$i.jsonl" 2>&1 | grep -v '^{' >> "$OUT/decode_$C.log"
  el "decode ${extra:-B 8} rc=${PIPESTATUS[0]}"
done
cat /tmp/decode_*.jsonl > "$OUT/decode_$C.jsonl" 2>/dev/null; cat "$OUT/decode_$C.log"
