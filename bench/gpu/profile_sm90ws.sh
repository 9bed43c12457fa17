#!/usr/bin/env bash
# Nsight Compute profile of one sm90ws attention call (bf16, B 1, H 32, N 8K, hd 128, dense, λ = inf)
# and, for comparison, one cuDNN SDPA call on the same inputs: speed of light, warp states, issue
# slots, pipe utilization. Needs build-ws/libsparge_c.so (bench/gpu/check_sm90ws.sh builds it).
# Usage (repo root, on the GPU machine): bash bench/gpu/profile_sm90ws.sh   -> $OUT/ncu_*.txt
set -uo pipefail
out=${OUT:-/tmp/sparge_out}
mkdir -p "$out"
cat > /tmp/one_call.py <<'PY'
import os, sys, torch, torch.nn.functional as F
sys.path.insert(0, "bench/gpu")
import bench_attention as ba
from torch.nn.attention import SDPBackend, sdpa_kernel
n, H, D = 8192, 32, 128
q, k, v = (torch.randn(1, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
out = torch.empty_like(q)
if sys.argv[1] == "sparge":
    sp = ba.Sparge("build-ws/libsparge_c.so")
    keep, counts, indices, _ = ba.random_block_mask(H, n, False, 0.0, seed=1)
    mask = ba.Mask(counts.data_ptr(), indices.data_ptr(), 1, 0, 1, H, n, n, 128, 64)
    opts = sp.options(False, pv_threshold=float("inf"))
    for _ in range(2):
        sp.attention(q, k, v, mask, opts, out, torch.cuda.current_stream().cuda_stream)
else:
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        for _ in range(2):
            F.scaled_dot_product_attention(q, k, v)
torch.cuda.synchronize()
PY
sections=(--section SpeedOfLight --section WarpStateStats --section SchedulerStats
          --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats)
timeout 100 ncu --clock-control none "${sections[@]}" -k regex:attn_fwd_sm90_ws --launch-skip 1 --launch-count 1 \
  python3 /tmp/one_call.py sparge >"$out/ncu_sm90ws.txt" 2>&1
echo "ncu sm90ws rc=$?"
timeout 80 ncu --clock-control none "${sections[@]}" -k regex:'cudnn|sm90|flash|fmha' --launch-skip 1 --launch-count 1 \
  python3 /tmp/one_call.py cudnn >"$out/ncu_cudnn.txt" 2>&1
echo "ncu cudnn rc=$?"
for f in "$out"/ncu_*.txt; do
  echo "== $(basename "$f")"
  grep -E "attn_fwd|Function Name|^  [a-z_0-9]+.*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|Issued Ipc|No Eligible|Warp Cycles Per Issued|Stall|Registers Per|Achieved Occupancy|Executed Ipc|Pipe|Tensor" "$f" | head -40
done
