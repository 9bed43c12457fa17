#!/usr/bin/env bash
# One H200 call for the quantized path (issue 10): build (sm_90a), every GPU test on the default
# kernel (the quantized ones print "[ quant ]" lines), compute-sanitizer on the quantized cases,
# then bench_attention.py --quant: the exact kernel, the whole quantized call (quantization pass +
# INT8/FP8 kernel) and cuDNN / Flash SDPA in one process, at each head dim of HEAD_DIMS (default
# "128"; the kernel has 64 and 128), N 8K and 32K, random block sparsity 0 / 0.5 / 0.75 / 0.9.
# Usage (repo root, device call with carry .devdeps):
#   [HEAD_DIMS="64 128"] bash bench/gpu/quant_check.sh <commit name>
# Records go to $OUT/quant.tgz, the tables to $OUT/summary.md.
set -uo pipefail
name=${1:?commit name}
final=${OUT:-/tmp/sparge_out}; out=$(mktemp -d); logs=$out/logs; mkdir -p "$final" "$logs"
extra=()
if [ ! -d /usr/include/gtest ] && [ -d .devdeps/usr ]; then extra+=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr"); fi
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B build-t "${gen[@]}" -DSPARGE_WITH_CUDA=ON -DSPARGE_CUDA_ARCHS=90a -DSPARGE_BUILD_BENCH=OFF \
  -DSPARGE_BUILD_TOOLS=OFF "${extra[@]}" >"$logs/build.log" 2>&1 &&
  timeout -k 5 360 cmake --build build-t -j"$(nproc)" --target sparge_gpu_tests sparge_c >>"$logs/build.log" 2>&1
rc=$?
echo "build rc=$rc ($SECONDS s)"; grep -hE "spill|error" "$logs/build.log" | sort -u | head -10
[ $rc -ne 0 ] && { tail -30 "$logs/build.log"; tar -czf "$final/quant.tgz" -C "$out" .; exit $rc; }
bin=./build-t/tests/sparge_gpu_tests
timeout -k 5 150 $bin >"$logs/gpu_tests.log" 2>&1
echo "gpu tests rc=$? ($SECONDS s): $(grep -E '^\[  (PASSED|FAILED) ' "$logs/gpu_tests.log" | tr '\n' ' ')"
grep -E "^\[  FAILED  \]|Failure|Which is|Expected" "$logs/gpu_tests.log" | sort -u | head -12
grep -E "^\[ quant \]" "$logs/gpu_tests.log"
for tool in memcheck racecheck synccheck; do
  timeout -k 5 90 compute-sanitizer --tool $tool --error-exitcode 3 $bin \
    --gtest_filter='Shapes/QuantAttention.*/0:Shapes/QuantAttention.*/4:Shapes/QuantAttention.*/6:Shapes/QuantAttention.*/11:Shapes/QuantAttention.*/13' \
    >"$logs/sanitizer_$tool.log" 2>&1
  echo "compute-sanitizer $tool rc=$? ($SECONDS s): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$logs/sanitizer_$tool.log" | tail -1)"
done
for hd in ${HEAD_DIMS:-128}; do
  PYTHONUNBUFFERED=1 timeout -k 5 200 python3 bench/gpu/bench_attention.py --lib build-t/libsparge_c.so \
    --commit "$name" --kernels sm90ws --quant --no-flex --head-dim "$hd" --seqs 8192,32768 \
    --sparsities 0,0.5,0.75,0.9 --out-dir "$out" --results-dir "" --tag "quant-d${hd}_$name" >>"$logs/bench.log" 2>&1
  echo "bench hd $hd rc=$? ($SECONDS s)"
done
grep -E '^\|' "$logs/bench.log"
python3 - "$out" <<'PY'
import glob, json, sys
for f in sorted(glob.glob(sys.argv[1] + "/*quant-d*.jsonl")):
    for line in open(f):
        r = json.loads(line)
        if r["impl"] == "sparge-quant":
            print(f"quant hd {r['head_dim']} N {r['seq_q']} causal {r['causal']} s {r['sparsity']:.2f}: rel_l1 vs fp32 "
                  f"{r['rel_l1']}, vs the exact kernel {r['rel_l1_vs_exact_same_mask']:.4f}")
PY
{ grep -hE '^\|' "$logs/bench.log"; grep -E "^\[ quant \]" "$logs/gpu_tests.log"; } > "$final/summary.md"
tar -czf "$final/quant.tgz" -C "$out" .
