#!/usr/bin/env bash
# Nsight Compute per-kernel durations of Stage 1 (sparge.predict_block_mask through the installed
# Python package) at short lengths, where its fixed costs weigh most (issue 11: the defaults'
# Stage 1 at 4K-8K): bf16, B 1, H 32, hd 128, N in $SEQS (default 4096 8192), two settings per
# length: "gated" (random inputs at the library's defaults: every block non-similar, the dense
# path's Stage 1) and "rows4" (estimate="sampled_rows", 4 rows, every block estimated, sim -1;
# "rows16": 16 rows, the two-pass estimate tuned models run).
# One ncu report per (setting, N), the call made twice (read the second call's kernels: the first
# pays the module loads); a table per report on stdout (bench/gpu/ncu_table.py), launch order.
# Usage (repo root, GPU machine, package installed): bash bench/gpu/profile_stage1.sh
set -uo pipefail
out=${OUT:-/tmp/sparge_out}; mkdir -p "$out"
cat > /tmp/stage1_calls.py <<'PY'
import sys, torch, sparge
setting, n = sys.argv[1], int(sys.argv[2])
q, k = (torch.randn(1, 32, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
opts = {"gated": {}, "call-today": {},
        "gated-rows4": dict(estimate="sampled_rows", sample_rows=4, sim_threshold=0.1),
        "call-auto": dict(estimate="auto", sim_threshold=0.1),
        "rows4": dict(estimate="sampled_rows", sample_rows=4, sim_threshold=-1.0),
        "rows16": dict(estimate="sampled_rows", sample_rows=16, sim_threshold=-1.0)}[setting]
v = torch.randn_like(q)
for _ in range(2):
    if setting.startswith("call-"):
        sparge.attention(q, k, v, **opts)
    else:
        sparge.predict_block_mask(q, k, **opts)
torch.cuda.synchronize()
PY
for n in ${SEQS:-4096 8192}; do
  for setting in ${SETTINGS:-gated gated-rows4 rows4 call-today call-auto}; do
    rep=/tmp/stage1_${setting}_$n
    timeout 200 ncu --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed \
      -f -o "$rep" python3 /tmp/stage1_calls.py $setting $n > "$out/ncu_stage1_${setting}_$n.log" 2>&1
    echo "== $setting N=$n (ncu rc=$?): both calls' kernels, in launch order"
    timeout 100 ncu -i "$rep.ncu-rep" --page raw --csv --print-units base \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed \
      > "$out/ncu_stage1_${setting}_$n.csv" 2>/dev/null
    python3 bench/gpu/ncu_table.py "$out/ncu_stage1_${setting}_$n.csv"
  done
done
