#!/usr/bin/env bash
# Nsight Compute source-level profile of one sm90ws attention call (bf16, B 1, H 32, N 8K, hd 128,
# dense, λ = inf): per SASS instruction, executed count and warp-stall samples by reason, so that
# the consumer's turn can be read instruction by instruction (where warps wait, on what).
# QUANT=1 profiles the quantized kernel instead (SparseOptions.quant = kInt8Fp8); HEAD_DIM=64 or
# 256 another head dim (default 128).
# Usage (repo root, GPU machine): bash bench/gpu/profile_source.sh <libsparge_c.so> [causal]
#   -> $OUT/ncu_source_sm90ws.csv.gz (ncu --page source --print-source sass, CSV) and a summary of
#      the stall reasons on stdout.
set -uo pipefail
lib=${1:?libsparge_c.so}; causal=${2:-0}
out=${OUT:-/tmp/sparge_out}; mkdir -p "$out"
cat > /tmp/one_call_src.py <<'PY'
import sys, torch
sys.path.insert(0, "bench/gpu")
import bench_attention as ba
lib, causal, quant, D = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", int(sys.argv[4])
n, H = 8192, 32
q, k, v = (torch.randn(1, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
out = torch.empty_like(q)
sp = ba.Sparge(lib)
keep, counts, indices, _ = ba.random_block_mask(H, n, causal, 0.0, seed=1)
mask = ba.Mask(counts.data_ptr(), indices.data_ptr(), 1, 0, 1, H, n, n, 128, 64)
opts = sp.options(causal, pv_threshold=float("inf"), quant=int(quant))
ws = torch.empty(max(1, sp.workspace_size(q, k, opts)), device="cuda", dtype=torch.uint8)
for _ in range(2):
    sp.attention(q, k, v, mask, opts, out, torch.cuda.current_stream().cuda_stream, ws=ws)
torch.cuda.synchronize()
PY
rep=/tmp/sm90ws_src
timeout 200 ncu --clock-control none --section SourceCounters --section WarpStateStats \
  --section SchedulerStats --section SpeedOfLight -k regex:attn_fwd_sm90_ws --launch-skip 1 --launch-count 1 \
  -f -o "$rep" python3 /tmp/one_call_src.py "$lib" "$causal" "${QUANT:-0}" "${HEAD_DIM:-128}" >"$out/ncu_source_run.log" 2>&1
echo "ncu source rc=$?"; tail -3 "$out/ncu_source_run.log"
timeout 100 ncu -i "$rep.ncu-rep" --page source --print-source sass --csv 2>/dev/null | gzip >"$out/ncu_source_sm90ws.csv.gz"
echo "source page: $(zcat "$out/ncu_source_sm90ws.csv.gz" | wc -l) lines"
timeout 60 ncu -i "$rep.ncu-rep" --page details 2>/dev/null | grep -E "Stall|Warp Cycles|Issued|Tensor|Eligible|Duration" | head -30
