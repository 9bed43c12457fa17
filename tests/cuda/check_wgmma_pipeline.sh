#!/usr/bin/env bash
# Compiles every sm_90a attention instance (the cp.async wgmma kernel attn_sm90_* and the
# warp-specialized TMA kernel attn_sm90ws_* and its quantized variant attn_sm90q8_*) with ptxas -v and fails if ptxas reports that it
# serialized the wgmma pipeline (infos C7510-C7520, "wgmma.mma_async instructions are serialized")
# or spilled registers: either makes the Hopper kernels several times slower while every test
# still passes. usage: check_wgmma_pipeline.sh <nvcc> <generated include dir>
set -euo pipefail
nvcc="$1"
gen_include="$2"
root="$(cd "$(dirname "$0")/../.." && pwd)"
fail=0
for src in "$root"/src/cuda/instances/attn_sm90_*.cu "$root"/src/cuda/instances/attn_sm90ws_*.cu \
    "$root"/src/cuda/instances/attn_sm90q8_*.cu; do
  log=$("$nvcc" -std=c++17 -O3 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a \
    -Xptxas -v -I"$root/src" -I"$root/include" -I"$gen_include" -c "$src" -o /dev/null 2>&1)
  regs=$(grep -o 'Used [0-9]* registers' <<<"$log" | head -1)
  # Every kernel of the file (sm90ws files hold the row grid's and the persistent grid's).
  spill="$(grep -o '[0-9]* bytes spill stores' <<<"$log" | awk '{s += $1} END {print s + 0}') bytes spill stores"
  if grep -q 'serialized' <<<"$log" || [ "${spill%% *}" != 0 ]; then
    echo "FAIL $(basename "$src"): $regs, $spill"
    { grep -E 'C75[0-9]{2}' <<<"$log" || true; } | cut -c1-200  # none on a spill alone
    fail=1
  else
    echo "ok   $(basename "$src"): $regs, $spill, wgmma pipelined"
  fi
done
exit $fail
