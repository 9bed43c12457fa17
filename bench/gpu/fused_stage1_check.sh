#!/usr/bin/env bash
# Device check of Stage 1 fused into the quantization pass and of the warp selection (issue 10):
# the GPU tests, memcheck and racecheck on the fused and Stage-1 cases, the fused / split / exact
# calls (bench_fused_stage1.py), and the kernels of one fused and one split call (ncu).
# Usage (repo root, GPU machine): bash bench/gpu/fused_stage1_check.sh <commit> <dir with
#   libsparge_c.so and sparge_gpu_tests>   -> $OUT/{gpu_tests,memcheck,racecheck,bench}_<commit>.log,
#   the bench's .jsonl, ncu-fused-stage1-<commit>.csv and its table.
set -uo pipefail
C=${1:?commit}; B=${2:?binary dir}
OUT=${OUT:-/tmp/sparge_out}; mkdir -p "$OUT"
timeout 150 $B/sparge_gpu_tests > $OUT/gpu_tests_$C.log 2>&1; echo "tests rc=$? $(grep -E '^\[  (PASSED|FAILED)' $OUT/gpu_tests_$C.log)"
for tool in memcheck racecheck; do timeout 120 compute-sanitizer --tool $tool $B/sparge_gpu_tests --gtest_filter='Shapes/FusedStage1.*:Shapes/PredictVsReference.*/1*:SparseAttentionEndToEnd.*' > $OUT/${tool}_$C.log 2>&1; echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|^\[  (PASSED|FAILED)' $OUT/${tool}_$C.log | tr '\n' ' ')"; done
timeout 200 python3 bench/gpu/bench_fused_stage1.py --lib $B/libsparge_c.so --commit $C --reps 30 --out-dir $OUT > $OUT/bench_$C.log 2>&1; echo bench rc=$?; tail -13 $OUT/bench_$C.log
timeout 100 ncu --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum -k regex:'quantize|pool|key_|select|compressed|attn' -f -o /tmp/fz python3 bench/gpu/bench_fused_stage1.py --lib $B/libsparge_c.so --calls-only --seqs 32768 --head-dims 128 > /dev/null 2>&1; echo ncu rc=$?
timeout 60 ncu -i /tmp/fz.ncu-rep --page raw --csv --print-units base --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum > $OUT/ncu-fused-stage1-$C.csv 2>/dev/null
python3 -c "
import csv,sys
rows=list(csv.DictReader(open(sys.argv[1])))
f=lambda s: float(s.replace(',',''))
for r in rows[1:]: print(f\"{r['Kernel Name'][:48]:48s} {f(r['gpu__time_duration.sum'])/1e3:8.1f} us rd {f(r['dram__bytes_read.sum'])/1e6:7.1f} MB wr {f(r['dram__bytes_write.sum'])/1e6:7.1f} MB\")" $OUT/ncu-fused-stage1-$C.csv | tee $OUT/ncu-table-$C.txt
