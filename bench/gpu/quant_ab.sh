#!/usr/bin/env bash
# One H200 call comparing source trees on the quantized and the exact path: each tree in TREES
# (a directory: "." for the working tree, or .ab/<name> prepared with
# `git archive <commit> | tar -x -C .ab/<name>`, untracked) is built (sm_90a, in parallel), the
# working tree's GPU tests and the others' quantized ones run, then bench_attention.py --quant times every tree's exact and
# quantized calls beside cuDNN (hd128, N 8K and 32K, random block sparsity 0 and 0.9).
# Usage (repo root, device call with carry .devdeps): TREES=". .ab/A .ab/B" bash bench/gpu/quant_ab.sh
# Records and logs go to $OUT/ab.tgz, the table to $OUT/summary.md.
set -uo pipefail
final=${OUT:-/tmp/sparge_out}; out=$(mktemp -d); logs=$out/logs; mkdir -p "$final" "$logs"
extra=()
if [ ! -d /usr/include/gtest ] && [ -d .devdeps/usr ]; then extra+=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr"); fi
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
name_of() { [ "$1" = . ] && echo work || basename "$1"; }
pids=()
for t in ${TREES:?TREES}; do
  n=$(name_of "$t"); targets=(sparge_c sparge_gpu_tests)
  ( cmake -S "$t" -B "build-$n" "${gen[@]}" -DSPARGE_WITH_CUDA=ON -DSPARGE_CUDA_ARCHS=90a \
      -DSPARGE_BUILD_BENCH=OFF -DSPARGE_BUILD_TOOLS=OFF "${extra[@]}" >"$logs/build_$n.log" 2>&1 &&
    timeout -k 5 360 cmake --build "build-$n" -j8 --target "${targets[@]}" >>"$logs/build_$n.log" 2>&1 ) &
  pids+=("$n:$!")
done
built=()
for np in "${pids[@]}"; do wait "${np#*:}" && built+=("${np%%:*}") || { echo "build ${np%%:*} failed"; tail -20 "$logs/build_${np%%:*}.log"; }; done
echo "built: ${built[*]} ($SECONDS s)"
if [ -x build-work/tests/sparge_gpu_tests ]; then
  timeout -k 5 150 build-work/tests/sparge_gpu_tests >"$logs/gpu_tests.log" 2>&1
  echo "gpu tests rc=$? ($SECONDS s): $(grep -E '^\[  (PASSED|FAILED) ' "$logs/gpu_tests.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED  \]|Failure" "$logs/gpu_tests.log" | sort -u | head -8
fi
for n in "${built[@]}"; do  # every other tree: its quantized GPU tests
  [ "$n" = work ] && continue
  timeout -k 5 60 "build-$n/tests/sparge_gpu_tests" --gtest_filter='*Quant*' >"$logs/gpu_tests_$n.log" 2>&1
  echo "quant gpu tests $n rc=$?: $(grep -E '^\[  (PASSED|FAILED) ' "$logs/gpu_tests_$n.log" | tr '\n' ' ')"
done
for n in "${built[@]}"; do
  PYTHONUNBUFFERED=1 timeout -k 5 120 python3 bench/gpu/bench_attention.py --lib "build-$n/libsparge_c.so" \
    --commit "$n" --kernels sm90ws --quant --no-flex --head-dim 128 --seqs 8192,32768 --sparsities 0,0.9 \
    --out-dir "$out" --results-dir "" --tag "quant-ab_$n" >"$logs/bench_$n.log" 2>&1
  echo "bench $n rc=$? ($SECONDS s)"
done
python3 - "$out" "${built[@]}" <<'PY' | tee "$final/summary.md"
import glob, json, sys
out, names = sys.argv[1], sys.argv[2:]
rows = {}
for f in glob.glob(out + "/*quant-ab_*.jsonl"):
    for line in open(f):
        r = json.loads(line)
        if r["sparsity"] is None:  # Stage 1 alone
            continue
        who = r["impl"].replace("sdpa-", "") if not r["impl"].startswith("sparge") else f"{r['commit']}:{r['impl'][7:]}"
        rows.setdefault((r["seq_q"], r["causal"], round(r["sparsity"], 1)), {})[who] = r["tops"]
cols = ["cudnn"] + [f"{n}:{i}" for n in names for i in ("exact", "quant")]
print("| N | causal | s | " + " | ".join(cols) + " |")
print("|---|---|---|" + "---|" * len(cols))
for k in sorted(rows):
    print(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(f"{rows[k][c]:.0f}" if c in rows[k] else "-" for c in cols) + " |")
PY
tar -czf "$final/ab.tgz" -C "$out" .
