#!/usr/bin/env bash
# One H200 call that compares the working tree (B, the candidate) with another commit (A) and
# checks B: both are built for sm_90a at once, B's GPU tests run on the three kernels, B's
# sm90ws kernel under compute-sanitizer, then bench_attention.py times A's and B's sm90ws kernel
# (and cuDNN) in the same run, bench_pv_skip.py and bench_window.py time B.
# Prepare A here (not committed; the device copy carries untracked files); without .ab/A only B
# is built and timed:
#   rm -rf .ab && mkdir -p .ab/A && git archive <A> | tar -x -C .ab/A
# Usage (repo root, device call with carry .devdeps): bash bench/gpu/ab_check.sh <A name> <B name>
# Records and logs go to $OUT/ab.tgz and the tables to $OUT/summary.md (the device returns at
# most 8 files).
# Experiments: VARIANTS="C D" also builds the source trees .ab/C and .ab/D (prepared like A, e.g.
# a copy of B with one change) and times their sm90ws kernel beside A and B; they are not tested.
set -uo pipefail
a_name=${1:?A name}; b_name=${2:?B name}
final=${OUT:-/tmp/sparge_out}; out=$(mktemp -d); logs=$out/logs; mkdir -p "$final" "$logs"
budget=560
left() { local l=$((budget - SECONDS)); [ "$l" -gt "$1" ] && l=$1; echo "$l"; }
step() {  # step <name> <max seconds> <cmd...>
  local name=$1 max=$2 t; shift 2
  t=$(left "$max")
  if [ "$t" -lt 15 ]; then echo "$name: skipped (time budget)"; return 99; fi
  timeout -k 5 "$t" "$@"; local rc=$?
  [ $rc -eq 124 ] && echo "$name: TIMEOUT after ${t}s"
  return $rc
}
extra=()
if [ ! -d /usr/include/gtest ] && [ -d .devdeps/usr ]; then extra+=(-DCMAKE_PREFIX_PATH="$PWD/.devdeps/usr"); fi
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
build() {  # build <source dir> <build dir> <targets...> (each build at most 300 s)
  local src=$1 dir=$2; shift 2
  cmake -S "$src" -B "$dir" "${gen[@]}" -DSPARGE_WITH_CUDA=ON -DSPARGE_CUDA_ARCHS=90a -DSPARGE_BUILD_BENCH=OFF \
    -DSPARGE_BUILD_TOOLS=OFF "${extra[@]}" >"$logs/build_$(basename "$dir").log" 2>&1 &&
    timeout -k 5 300 cmake --build "$dir" -j8 --target "$@" >>"$logs/build_$(basename "$dir").log" 2>&1
}
ra=1
if [ -d .ab/A ]; then build .ab/A build-a sparge_c & pa=$!; fi
variants=()
for v in ${VARIANTS:-}; do build ".ab/$v" "build-$v" sparge_c & variants+=("$v:$!"); done
build . build-b sparge_gpu_tests sparge_c
rb=$?; [ -d .ab/A ] && { wait $pa; ra=$?; }
built_variants=()
for vp in "${variants[@]}"; do
  wait "${vp#*:}" && built_variants+=("${vp%%:*}") || echo "build ${vp%%:*} failed"
done
echo "build A rc=$ra B rc=$rb variants built: ${built_variants[*]} ($SECONDS s)"
grep -hE "spill|error" "$logs"/build_*.log | sort -u | head -10
[ $rb -ne 0 ] && { tail -30 "$logs/build_build-b.log"; tar -czf "$final/ab.tgz" -C "$out" .; exit $rb; }
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
bin=./build-b/tests/sparge_gpu_tests
for k in sm90ws sm90 sm80; do
  SPARGE_CUDA_KERNEL=$k step "tests $k" 100 $bin >"$logs/gpu_tests_$k.log" 2>&1
  echo "gpu tests ($k) rc=$? ($SECONDS s): $(grep -E '^\[  (PASSED|FAILED) ' "$logs/gpu_tests_$k.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED  \]|Failure" "$logs/gpu_tests_$k.log" | sort -u | head -8
done
grep -hE "window|predict \]" "$logs/gpu_tests_sm90ws.log" | head -16
small='TmaSm90.*:Window/AttentionVsReference.*:Shapes/AttentionVsReference.MatchesWithinDtypeTolerance/2:AttentionEmptyRows.*'
for tool in memcheck racecheck synccheck; do
  SPARGE_CUDA_KERNEL=sm90ws step "sanitizer $tool" 70 compute-sanitizer --tool $tool --error-exitcode 3 \
    $bin --gtest_filter="$small" >"$logs/sanitizer_$tool.log" 2>&1
  echo "compute-sanitizer $tool (sm90ws) rc=$? ($SECONDS s): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$logs/sanitizer_$tool.log" | tail -1)"
done
bench() {  # bench <lib> <tag> <head dim> <seqs>
  PYTHONUNBUFFERED=1 step "bench $2" 90 python3 bench/gpu/bench_attention.py --lib "$1" --commit "$2" \
    --head-dim "$3" --seqs "$4" --sparsities 0 --kernels sm90ws --no-flex --out-dir "$out" \
    --results-dir "" --tag "ab_$2_d$3" >"$logs/bench_$2_d$3.log" 2>&1
  echo "bench $2 d$3 rc=$? ($SECONDS s)"
}
[ $ra -eq 0 ] && bench build-a/libsparge_c.so "$a_name" 128 8192,32768
bench build-b/libsparge_c.so "$b_name" 128 8192,32768
[ $ra -eq 0 ] && bench build-a/libsparge_c.so "$a_name" 64 32768
bench build-b/libsparge_c.so "$b_name" 64 32768
for v in "${built_variants[@]}"; do
  bench "build-$v/libsparge_c.so" "$v" 128 8192,32768
  bench "build-$v/libsparge_c.so" "$v" 64 32768
done
PYTHONUNBUFFERED=1 step "pv skip" 80 python3 bench/gpu/bench_pv_skip.py --lib build-b/libsparge_c.so \
  --commit "$b_name" --seqs 16384 --head-dims 128,64 --kernels sm90ws --out-dir "$out" >"$logs/pv_skip.log" 2>&1
echo "pv skip rc=$? ($SECONDS s)"; grep -E '^\|' "$logs/pv_skip.log"
PYTHONUNBUFFERED=1 step "window" 90 python3 bench/gpu/bench_window.py --lib build-b/libsparge_c.so \
  --commit "$b_name" --out-dir "$out" >"$logs/window.log" 2>&1
echo "window rc=$? ($SECONDS s)"; grep -E '^\||^Device' "$logs/window.log"; grep -vE '^\||^Device' "$logs/window.log" | tail -6
PYTHONUNBUFFERED=1 step "stage 1" 60 python3 bench/gpu/bench_stage1.py --lib build-b/libsparge_c.so \
  --commit "$b_name" --out-dir "$out" >"$logs/stage1.log" 2>&1
echo "stage 1 rc=$? ($SECONDS s)"; tail -3 "$logs/stage1.log"
if [ "${PROFILE:-0}" = 1 ]; then
  OUT=$out step "profile" 200 bash bench/gpu/profile_source.sh build-b/libsparge_c.so >"$logs/profile.log" 2>&1
  echo "profile rc=$? ($SECONDS s)"; cat "$logs/profile.log" | tail -25
fi
{
echo "== A ($a_name) vs B ($b_name), sm90ws, dense-equivalent TOPS (causal halved) =="
python3 - "$out" "$a_name" "$b_name" "${built_variants[@]}" <<'PY'
import glob, json, sys
out, a, b = sys.argv[1:4]
extra = sys.argv[4:]
recs = [json.loads(l) for f in glob.glob(out + "/*_ab_*.jsonl") for l in open(f) if l.strip()]
rows = {}
for r in recs:
    if r["impl"] == "sparge-stage1":
        continue
    who = r["commit"] if r["impl"].startswith("sparge") else r["impl"].replace("sdpa-", "")
    rows.setdefault((r["head_dim"], r["seq_q"], r["causal"]), {})[who] = r["tops"]
print(f"| hd | N | causal | {a} | {b} | cudnn | {b}/{a} | {b}/cudnn |" + "".join(f" {v} | {v}/{a} |" for v in extra))
print("|---|---|---|---|---|---|---|---|" + "---|---|" * len(extra))
for k in sorted(rows):
    d = rows[k]
    f = lambda x: f"{d[x]:.0f}" if x in d else "-"
    r1 = f"{d[b] / d[a]:.3f}" if a in d and b in d else "-"
    r2 = f"{d[b] / d['cudnn']:.3f}" if "cudnn" in d and b in d else "-"
    rv = "".join(f" {f(v)} | {d[v] / d[a]:.3f} |" if a in d and v in d else f" {f(v)} | - |" for v in extra)
    print(f"| {k[0]} | {k[1]} | {k[2]} | {f(a)} | {f(b)} | {f('cudnn')} | {r1} | {r2} |" + rv)
PY
grep -E '^\|' "$logs/pv_skip.log"; grep -E '^\||^Device' "$logs/window.log"; grep -E '^\|' "$logs/stage1.log"
} | tee "$final/summary.md"
tar -czf "$final/ab.tgz" -C "$out" .
