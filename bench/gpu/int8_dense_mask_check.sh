#!/usr/bin/env bash
# Device check of quant kInt8 and dense attention masks on CUDA once their switches are gone
# (SPARGE_CUDA_INT8 and SPARGE_CUDA_DENSE_MASK, dropped after their tests passed on an H100 on
# 2026-12-05), in one call (~7 min) with binaries built here: pack them with
#   tar czf .devpack/bins.tgz -C build-q libsparge_c.so -C tests sparge_gpu_tests
# (.devpack ignored by .git/info/exclude, named in the call's carry), then on the device
#   bash bench/gpu/int8_dense_mask_check.sh <commit>
# It runs:
#   1. every C++ GPU test, then the two paths' tests under compute-sanitizer memcheck;
#   2. bench_attention.py at N 8K and 32K, hd 128 and 64, sparsity 0 and 0.9: sparge-quant-int8
#      against the exact kernels (auto = sm90ws, and sm80: the same mma.sync kernel exact),
#      sparge-quant (int8_fp8) and cuDNN / flash SDPA, in one process per head dim;
#   3. the Python tests of the files the switches touched (PYTEST_FILES=all: the suite but the
#      distributed tests; the package installed in the background);
#   4. (with a wheel of scripts/build_wheel.sh in .devpack: installed instead of built, timed)
#   5. issue 12's Gemma 3 run (bench/eval/gemma_window.py, random weights, 8192 tokens, bf16)
#      with transformers' eager attention as a second bf16 reference: the logits' distance
#      between two correct bf16 implementations, beside Sparge's.
# At most 8 files come back: logs and records in $OUT.
source bench/gpu/device_prelude.sh
# The package: the wheel of scripts/build_wheel.sh when one was carried in .devpack (issue 13:
# it installs with no compiler), else built here from the tree.
install_package_in_background "$(ls .devpack/sparge-*.whl 2>/dev/null | head -1)"
timeout 100 /tmp/bins/sparge_gpu_tests > "$OUT/gpu_tests_$C.log" 2>&1
el "gpu tests rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gpu_tests_$C.log" | tr '\n' ' ')"
grep -E 'Failure' -A4 "$OUT/gpu_tests_$C.log" | head -30
timeout 90 compute-sanitizer --tool memcheck /tmp/bins/sparge_gpu_tests \
  --gtest_filter='*QuantAttention*_int8:*FusedStage1*_int8:QuantAttentionArgs.*:*DenseMask*' \
  > "$OUT/memcheck_$C.log" 2>&1
el "memcheck int8 + dense masks rc=$? $(grep -E 'ERROR SUMMARY|^\[  (PASSED|FAILED)' "$OUT/memcheck_$C.log" | tr '\n' ' ')"
bench() {  # one head dim: sparge-quant-int8 beside the exact kernels, int8_fp8, cuDNN, flash
  timeout 100 python3 bench/gpu/bench_attention.py --lib /tmp/bins/libsparge_c.so \
    --commit "$C" --seqs 8192,32768 --sparsities 0,0.9 --head-dim "$1" --kernels auto,sm80 \
    --quant --quant-int8 --no-flex --out-dir "$OUT" --results-dir "$OUT" --tag "int8-d$1" \
    2>&1 | grep -v '^{' >> "$OUT/bench_$C.log"
  el "bench int8 hd $1 rc=${PIPESTATUS[0]}"
}
bench 128
tail -24 "$OUT/bench_$C.log"
wait $PIP; el "$(tail -1 /tmp/install.log)"
(cd /tmp && python3 -c "import sparge; print(sparge.__file__); print(sparge.build_info())")
# The Python files the switches touched (the whole suite but the distributed tests with
# PYTEST_FILES=all: ~100 s more).
FILES=${PYTEST_FILES:-test_cuda.py test_attn_mask.py test_patch.py test_transformers.py}
[ "$FILES" = all ] && FILES="--ignore=test_distributed.py"
(cd tests/python && timeout 130 python3 -m pytest -q -p no:cacheprovider -rs $FILES \
  > "$OUT/pytest_$C.log" 2>&1)
el "pytest rc=$? $(tail -1 "$OUT/pytest_$C.log")"; grep -E "^FAILED|^E  " "$OUT/pytest_$C.log" | head -12
timeout 90 python3 bench/eval/gemma_window.py --random-weights --device cuda --tokens 8192 \
  --eager --commit "$C" --out "$OUT/gemma3_window_$C.jsonl" > "$OUT/gemma3_window_$C.log" 2>&1
el "gemma rc=$?"; tail -14 "$OUT/gemma3_window_$C.log"
bench 64  # last: the first to go if the call runs out of time
tail -20 "$OUT/bench_$C.log"
