#!/usr/bin/env bash
# Nsight Compute durations of Stage 1's reading kernels (pool_blocks for q and k, the key mean)
# for one or more prebuilt libraries, with every block similar (sim_threshold -1) so that the key
# side runs: bench_stage1.py --lib L --sim -1 --estimates pooled, N in $SEQS (default 4096 8192
# 32768), bf16, B 1, H 32, hd 128. One table per (library, N): the kernels of one Stage 1 call
# after the script's first calls (ncu_table.py). Usage (repo root, GPU machine):
#   LIBS="base=/tmp/a.so work=/tmp/b.so" bash bench/gpu/profile_pool.sh
set -uo pipefail
out=${OUT:-/tmp/sparge_out}; mkdir -p "$out"
metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed
for entry in ${LIBS:?LIBS}; do
  name=${entry%%=*} lib=${entry#*=}
  for n in ${SEQS:-4096 8192 32768}; do
    rep=/tmp/pool_${name}_$n
    # Launch order per call: pool q, key mean (2 kernels), pool k. The first predict (sim 1, the
    # dense kernel's mask) skips the key side; skip it and the first timed call's warm-up.
    timeout 120 ncu --clock-control none -k regex:"pool_blocks|key_mean" --launch-skip 8 --launch-count 4 \
      --metrics "$metrics" -f -o "$rep" python3 bench/gpu/bench_stage1.py --lib "$lib" --sim -1 \
      --estimates pooled --seqs "$n" --reps 3 --out-dir /tmp > "$out/ncu_pool_${name}_$n.log" 2>&1
    echo "== $name N=$n (ncu rc=$?)"
    ncu -i "$rep.ncu-rep" --page raw --csv --print-units base --metrics "$metrics" \
      > "$out/ncu_pool_${name}_$n.csv" 2>/dev/null
    python3 bench/gpu/ncu_table.py "$out/ncu_pool_${name}_$n.csv"
  done
done
