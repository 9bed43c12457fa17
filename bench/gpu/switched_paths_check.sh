#!/usr/bin/env bash
# Device check of the two paths written without a GPU and served only behind a switch, in one
# call (~5 min) with the binaries of bench/gpu/pending_check.sh's pack (.devpack/bins.tgz,
# carried):
#   1. their GPU tests under compute-sanitizer memcheck (they also ran, plainly, in
#      pending_check.sh's first step): quant kInt8 (SPARGE_CUDA_INT8=1: the sm80 kernel on INT8
#      Q/K codes; QuantAttention and FusedStage1 '*_int8') and dense attention masks
#      (SPARGE_CUDA_DENSE_MASK=1: tile classes, Stage 1's eligibility, the sm80 dense-mask
#      instances; DenseMask*), which the tests set themselves;
#   2. bench_attention.py at N 8K and 32K, hd 128 and 64, sparsity 0 and 0.9: sparge-quant-int8
#      against the exact kernels (auto = sm90ws, and sm80: the same mma.sync kernel exact),
#      sparge-quant (int8_fp8) and cuDNN / flash SDPA, in one process per head dim.
# Usage (repo root, on the device): bash bench/gpu/switched_paths_check.sh <commit>; logs and
# records in $OUT. If both pass, the switches can go (docs/cuda.md says where each is read).
set -uo pipefail
C=${1:?commit}
OUT=${OUT:-/tmp/sparge_out}; mkdir -p "$OUT"
T0=$(date +%s); el(){ echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
mkdir -p /tmp/bins && tar xzf .devpack/bins.tgz -C /tmp/bins || { echo "no .devpack/bins.tgz"; exit 1; }
export PYTHONUNBUFFERED=1
timeout 90 compute-sanitizer --tool memcheck /tmp/bins/sparge_gpu_tests \
  --gtest_filter='*QuantAttention*_int8:*FusedStage1*_int8:QuantAttentionArgs.*:*DenseMask*' \
  > "$OUT/memcheck_switched_$C.log" 2>&1
el "memcheck int8 + dense masks rc=$? $(grep -E 'ERROR SUMMARY|^\[  (PASSED|FAILED)' "$OUT/memcheck_switched_$C.log" | tr '\n' ' ')"
for hd in 128 64; do
  SPARGE_CUDA_INT8=1 timeout 120 python3 bench/gpu/bench_attention.py --lib /tmp/bins/libsparge_c.so \
    --commit "$C" --seqs 8192,32768 --sparsities 0,0.9 --head-dim $hd --kernels auto,sm80 \
    --quant --quant-int8 --no-flex --out-dir "$OUT" --results-dir "$OUT" --tag "int8-d$hd" \
    > "$OUT/int8_d${hd}_$C.log" 2>&1
  el "bench int8 hd $hd rc=$?"; tail -14 "$OUT/int8_d${hd}_$C.log"
done
