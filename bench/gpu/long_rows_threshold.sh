#!/usr/bin/env bash
# Device run: where the long-row selection (select_long.cuh) beats the shared-memory one. One
# library (.devpack/bins.tgz) given twice to bench_long_rows.py, once with every row forced to
# the long-row path (":long"), at 768-4096 key blocks (48K-256K tokens), random and smooth
# inputs, Stage 1 alone, masks compared; then the smooth inputs at 1M tokens (long rows either
# way), Stage 1 and the whole call.   bash bench/gpu/long_rows_threshold.sh <commit>
source bench/gpu/device_prelude.sh
lib=/tmp/bins/libsparge_c.so
for w in random smooth; do
  timeout 150 python3 bench/gpu/bench_long_rows.py --libs "short=$lib" "long=$lib:long" \
    --tokens 49152 65536 131072 262144 --workload "$w" --no-whole-call --commit "$C" \
    --out "$OUT/threshold_${w}_$C.jsonl" 2> "$OUT/threshold_${w}_$C.log"
  el "threshold $w rc=$?"
done
timeout 200 python3 bench/gpu/bench_long_rows.py --libs "work=$lib" --tokens 1048576 \
  --workload smooth --commit "$C" --out "$OUT/smooth_1m_$C.jsonl" 2> "$OUT/smooth_1m_$C.log"
el "smooth 1M rc=$?"
cat "$OUT"/threshold_*_"$C".log "$OUT/smooth_1m_$C.log" | grep -v '^{'
