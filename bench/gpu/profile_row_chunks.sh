#!/usr/bin/env bash
# Nsight Compute per-kernel durations of one whole sparse_attention call through the C ABI, run
# in row chunks (the library's choice) and forced whole (SPARGE_ROW_CHUNK_BLOCKS = the query
# blocks): where the chunked call's extra time goes (bench_row_chunks.py times both).
# bf16, B 1, H 32, hd 128, not causal, library defaults, bench_stage1.py's "smooth" input
# (every block estimated), N in $SEQS (default 32768), modes in $MODES (default "chunked whole").
# Each call is made twice; the table shows the second (the first pays the module loads), grouped
# by kernel name with launch counts. $TAG (optional) names the csv files, for A/B runs.
# Usage (repo root, GPU machine): bash bench/gpu/profile_row_chunks.sh path/to/libsparge_c.so
set -uo pipefail
lib=${1:?libsparge_c.so}
out=${OUT:-/tmp/sparge_out}; mkdir -p "$out"
cat > /tmp/row_chunk_calls.py <<'PY'
import os, sys
import torch
sys.path.insert(0, "bench/gpu")
from bench_attention import Sparge
from bench_fused_stage1 import sparse_call
from bench_stage1 import smooth_inputs
lib, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "whole":
    os.environ["SPARGE_ROW_CHUNK_BLOCKS"] = str((n + 63) // 64)
sp = Sparge(lib)
gen = torch.Generator(device="cuda").manual_seed(0)
q, k, v = smooth_inputs(1, 32, n, 128, gen)
o = torch.empty_like(q)
opts = sp.options(False)
ws = torch.empty(sp.workspace_size(q, k, opts, caller_mask=False), dtype=torch.uint8, device="cuda")
print("workspace MiB", ws.numel() / 2**20)
for i in range(2):
    torch.cuda.synchronize()
    if i == 1:
        torch.cuda.profiler.start()
    sparse_call(sp, q, k, v, opts, o, ws, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
torch.cuda.profiler.stop()
PY
cat > /tmp/group_kernels.py <<'PY'
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
head = rows[0]
tot, cnt, order = collections.defaultdict(float), collections.Counter(), []
for r in rows[2:]:
    c = dict(zip(head, r))
    name = c["Kernel Name"].replace("void ", "").split("(")[0].split("<")[0]
    if name not in cnt: order.append(name)
    cnt[name] += 1; tot[name] += float(c["gpu__time_duration.sum"].replace(",", ""))
print(f"{'kernel':44} {'launches':>8} {'us':>9}")
for n in order: print(f"{n[:44]:44} {cnt[n]:8d} {tot[n] / 1e3:9.1f}")
print(f"{'total':44} {sum(cnt.values()):8d} {sum(tot.values()) / 1e3:9.1f}")
PY
for n in ${SEQS:-32768}; do
  for mode in ${MODES:-chunked whole}; do
    rep=/tmp/row_chunks_${mode}_$n${TAG:+_$TAG}
    timeout 200 ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum \
      -f -o "$rep" python3 /tmp/row_chunk_calls.py "$lib" $mode $n > "$rep.log" 2>&1
    echo "== ${TAG:+$TAG }$mode N=$n (ncu rc=$?) $(grep workspace "$rep.log")"
    timeout 100 ncu -i "$rep.ncu-rep" --page raw --csv --print-units base --metrics gpu__time_duration.sum \
      > "$out/$(basename "$rep").csv" 2>/dev/null
    python3 /tmp/group_kernels.py "$out/$(basename "$rep").csv"
  done
done
