#!/usr/bin/env bash
# One command on the H200: first check of the warp-specialized kernel (SPARGE_CUDA_KERNEL=sm90ws).
#   1. build the CUDA tree for sm_90a (all cores): GPU tests + libsparge_c
#   2. GPU tests on sm90ws, then on sm90 (same binary, env switch)
#   3. compute-sanitizer memcheck / racecheck / synccheck on small cases, sm90ws
#   4. bench_attention.py: sm80, sm90, sm90ws (+ SDPA) bf16 B1 H32, hd128 N 8K/32K and hd64 N 32K,
#      non-causal and causal, sparsity 0 and 0.75
#   5. bench_pv_skip.py: time saved by the λ rule (sink heads), hd128 and hd64, N 16K
# Every step has a timeout (a pipeline deadlock hangs, it does not crash) and the whole run stays
# under ~8.5 minutes; logs go to $OUT, a compact table is printed last.
# Order: build, tests sm90ws, bench hd128, memcheck, tests sm90, racecheck, synccheck, bench hd64.
# Usage (repo root): bash bench/gpu/check_sm90ws.sh [commit]
#   (device call: carry `.devdeps`, made here by bench/gpu/make_devdeps.sh, for GoogleTest)
set -uo pipefail
commit=${1:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
out=${OUT:-/tmp/sparge_out}
mkdir -p "$out"
budget=510  # seconds for everything
left() { local l=$((budget - SECONDS)); [ "$l" -gt "$1" ] && l=$1; echo "$l"; }
step() {  # step <name> <max seconds> <cmd...>: run with a timeout (skipped when time is out)
  local name=$1 max=$2 t; shift 2
  t=$(left "$max")
  if [ "$t" -lt 15 ]; then echo "$name: skipped (time budget)"; return 99; fi
  timeout -k 5 "$t" "$@"
  local rc=$?
  [ $rc -eq 124 ] && echo "$name: TIMEOUT after ${t}s (hang?)"
  return $rc
}

extra=()
if [ ! -d /usr/include/gtest ] && [ -d .devdeps/usr ]; then extra+=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr"); fi
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B build-ws "${gen[@]}" -DSPARGE_WITH_CUDA=ON -DSPARGE_CUDA_ARCHS=90a -DSPARGE_BUILD_BENCH=OFF \
  -DSPARGE_BUILD_TOOLS=OFF "${extra[@]}" >"$out/build.log" 2>&1 &&
  step build 300 cmake --build build-ws -j16 --target sparge_gpu_tests sparge_c >>"$out/build.log" 2>&1
rc=$?
echo "build rc=$rc ($SECONDS s)"; grep -E "spill|error" "$out/build.log" | sort -u | head -20
[ $rc -ne 0 ] && { tail -30 "$out/build.log"; exit $rc; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
bin=./build-ws/tests/sparge_gpu_tests

tests() {  # tests <kernel>
  SPARGE_CUDA_KERNEL=$1 step "tests $1" 100 $bin >"$out/gpu_tests_$1.log" 2>&1
  echo "gpu tests ($1) rc=$? ($SECONDS s): $(grep -E '^\[  (PASSED|FAILED) ' "$out/gpu_tests_$1.log" | tr '\n' ' ')"
  grep -E "FAILED|Failure|Which is|rel_l1 [^ ]*(e-0[0-2]|inf|nan)|OK \] TmaSm90" "$out/gpu_tests_$1.log" | head -12
}
small='TmaSm90.*:Shapes/AttentionVsReference.MatchesWithinDtypeTolerance/0:Shapes/AttentionVsReference.MatchesWithinDtypeTolerance/1:Shapes/AttentionVsReference.MatchesWithinDtypeTolerance/8:AttentionEmptyRows.*'
sanitize() {  # sanitize <tool>
  SPARGE_CUDA_KERNEL=sm90ws step "sanitizer $1" 75 compute-sanitizer --tool $1 --error-exitcode 3 \
    $bin --gtest_filter="$small" >"$out/sanitizer_$1.log" 2>&1
  echo "compute-sanitizer $1 (sm90ws) rc=$? ($SECONDS s): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer_$1.log" | tail -1)"
  grep -E "^=+ +(Invalid|Error|Race|Barrier|.*hazard)" "$out/sanitizer_$1.log" | sort | uniq -c | head -5
}
bench() {  # bench <head dim> <seqs> <max seconds>
  PYTHONUNBUFFERED=1 step "bench d$1" "$3" python3 bench/gpu/bench_attention.py --lib build-ws/libsparge_c.so \
    --commit "$commit" --head-dim "$1" --seqs "$2" --sparsities 0,0.75 --kernels sm90,sm80,sm90ws --no-flex \
    --out-dir "$out" --results-dir "" --tag "sm90ws_d$1" >"$out/bench_d$1.log" 2>&1
  echo "bench d$1 rc=$? ($SECONDS s)"; grep -vE '^\{' "$out/bench_d$1.log" | grep -vE '^\||^$|^Device' | tail -5
}

pvskip() {  # pvskip <max seconds>
  PYTHONUNBUFFERED=1 step "pv skip" "$1" python3 bench/gpu/bench_pv_skip.py --lib build-ws/libsparge_c.so \
    --commit "$commit" --seqs 16384 --head-dims 128,64 --kernels sm90ws,sm80 --out-dir "$out" \
    >"$out/bench_pv_skip.log" 2>&1
  echo "bench pv skip rc=$? ($SECONDS s)"; grep -E '^\|' "$out/bench_pv_skip.log"
  grep -E 'Error|error' "$out/bench_pv_skip.log" | tail -3
}

# Most telling first, so that a slow step only cuts the least important ones.
tests sm90ws
grep -E "^\[ (attention|pv skip) \]" "$out/gpu_tests_sm90ws.log" | head -14
bench 128 8192,32768 150
pvskip 120
sanitize memcheck
tests sm90
tests sm80
sanitize racecheck
sanitize synccheck
bench 64 32768 75

echo "== sm90ws check, commit $commit: dense-equivalent TOPS (causal halved); rel_l1 vs fp32 SDPA at s=0 =="
python3 - "$out" <<'PY'
import glob, json, sys
recs = [json.loads(l) for f in sorted(glob.glob(sys.argv[1] + "/*sm90ws_d*.jsonl")) for l in open(f) if l.strip()]
key = lambda r: (r["head_dim"], r["seq_q"], r["causal"], round(r["sparsity"] or 0, 2))
rows = {}
for r in recs:
    if r["impl"] == "sparge-stage1":
        continue
    name = r.get("kernel") or r["impl"].replace("sdpa-", "")
    rows.setdefault(key(r), {})[name] = r
cols = ["sm80", "sm90", "sm90ws", "cudnn", "flash"]
print("| hd | N | causal | s | " + " | ".join(cols) + " | ws/sm90 | ws rel_l1 | ws vs sm90 |")
print("|---|---|---|---|" + "---|" * (len(cols) + 3))
for k in sorted(rows):
    d = rows[k]
    cell = lambda c: f"{d[c]['tops']:.0f}" if c in d and d[c].get("tops") else "-"
    ws = d.get("sm90ws", {})
    ratio = f"{ws['tops'] / d['sm90']['tops']:.2f}" if ws and "sm90" in d else "-"
    err = ws.get("rel_l1")
    vs = ws.get("rel_l1_vs_first_kernel")
    print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | " + " | ".join(cell(c) for c in cols) +
          f" | {ratio} | {'-' if err is None else f'{err:.1e}'} | {'-' if vs is None else f'{vs:.1e}'} |")
if not recs:
    print("no benchmark records")
PY
