#!/usr/bin/env bash
# Nsight Compute per-kernel profile of what runs around the attention kernel (issue 10): Stage 1
# (sparge_predict_block_mask, default options) and the quantized call's quantization pass, bf16,
# B 1, H 32, hd 128, N 32K (N=... to change): per kernel its duration, DRAM bytes and throughput
# and the SM / memory speed-of-light, so that each launch can be held against reading its bytes
# at the HBM rate.
# Usage (repo root, GPU machine): bash bench/gpu/profile_pipeline.sh <libsparge_c.so>
#   -> $OUT/ncu_pipeline.csv (ncu --page raw, CSV) and a table on stdout (bench/gpu/ncu_table.py).
set -uo pipefail
lib=${1:?libsparge_c.so}
out=${OUT:-/tmp/sparge_out}; mkdir -p "$out"
cat > /tmp/pipeline_calls.py <<'PY'
import math, sys, torch
sys.path.insert(0, "bench/gpu")
import bench_attention as ba
lib, n = sys.argv[1], int(sys.argv[2])
B, H, D = 1, 32, 128
q, k, v = (torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
sp = ba.Sparge(lib)
stream = torch.cuda.current_stream().cuda_stream
nq, nk = math.ceil(n / ba.BLOCK_Q), math.ceil(n / ba.BLOCK_K)
pc = torch.empty(B * H * nq, device="cuda", dtype=torch.int32)
pi = torch.empty(B * H * nq * nk, device="cuda", dtype=torch.int32)
pmask = ba.Mask(pc.data_ptr(), pi.data_ptr(), 1, 0, B, H, n, n, ba.BLOCK_Q, ba.BLOCK_K)
popts = sp.options(False)
ws = torch.empty(sp.workspace_size(q, k, popts), device="cuda", dtype=torch.uint8)
sp.predict(q, k, popts, pmask, ws, stream)
# The quantized call on a mask of one tile per row: the pass runs whole, the kernel is short.
keep, counts, indices, _ = ba.random_block_mask(H, n, False, 0.99, seed=1)
mask = ba.Mask(counts.data_ptr(), indices.data_ptr(), 1, 0, 1, H, n, n, ba.BLOCK_Q, ba.BLOCK_K)
qopts = sp.options(False, quant=1)
qws = torch.empty(sp.workspace_size(q, k, qopts), device="cuda", dtype=torch.uint8)
o = torch.empty_like(q)
sp.attention(q, k, v, mask, qopts, o, stream, ws=qws)
torch.cuda.synchronize()
print("calls done")
PY
rep=/tmp/pipeline_prof
timeout 300 ncu --clock-control none --section SpeedOfLight --metrics dram__bytes_read.sum,dram__bytes_write.sum \
  -k regex:'key_|pool_|compressed|select|quantize|sampled|error_target|choose' \
  -f -o "$rep" python3 /tmp/pipeline_calls.py "$lib" "${N:-32768}" >"$out/ncu_pipeline_run.log" 2>&1
echo "ncu rc=$?"; tail -2 "$out/ncu_pipeline_run.log"
timeout 100 ncu -i "$rep.ncu-rep" --page raw --csv --print-units base \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size,launch__block_size \
  >"$out/ncu_pipeline.csv" 2>/dev/null
python3 bench/gpu/ncu_table.py "$out/ncu_pipeline.csv"
