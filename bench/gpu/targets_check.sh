#!/usr/bin/env bash
# One H200 call that checks the working tree and measures issue 9's remaining targets: build
# (sm_90a), GPU tests on the default kernel, then bench_attention.py on sm90ws beside cuDNN,
# Flash SDPA and FlexAttention (same block mask): hd128 at N 4K and 32K with random block
# sparsity 0 / 0.5 / 0.75 / 0.9, hd256 at N 8K dense, and Stage 1 by estimate (with the
# error target). Usage (repo root, device call with carry .devdeps):
#   bash bench/gpu/targets_check.sh <commit name>
# Records go to $OUT/targets.tgz, the tables to $OUT/summary.md.
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
[ $rc -ne 0 ] && { tail -30 "$logs/build.log"; tar -czf "$final/targets.tgz" -C "$out" .; exit $rc; }
timeout -k 5 120 ./build-t/tests/sparge_gpu_tests >"$logs/gpu_tests.log" 2>&1
echo "gpu tests rc=$? ($SECONDS s): $(grep -E '^\[  (PASSED|FAILED) ' "$logs/gpu_tests.log" | tr '\n' ' ')"
grep -E "^\[  FAILED  \]|Failure" "$logs/gpu_tests.log" | sort -u | head -8
lib=build-t/libsparge_c.so
bench() {  # bench <tag> <args...>
  local tag=$1; shift
  PYTHONUNBUFFERED=1 timeout -k 5 150 python3 bench/gpu/bench_attention.py --lib $lib --commit "$name" \
    --kernels sm90ws --out-dir "$out" --results-dir "" --tag "$tag" "$@" >"$logs/$tag.log" 2>&1
  echo "bench $tag rc=$? ($SECONDS s)"; grep -E '^\|' "$logs/$tag.log"
}
bench "targets-d128_$name" --head-dim 128 --seqs 4096,32768 --sparsities 0,0.5,0.75,0.9
bench "targets-d256_$name" --head-dim 256 --seqs 8192 --sparsities 0 --no-flex
PYTHONUNBUFFERED=1 timeout -k 5 90 python3 bench/gpu/bench_stage1.py --lib $lib --commit "$name" \
  --out-dir "$out" >"$logs/stage1.log" 2>&1
echo "stage 1 rc=$? ($SECONDS s)"; grep -E '^\|' "$logs/stage1.log"
{ grep -hE '^\|' "$logs"/targets-*.log "$logs/stage1.log"; } > "$final/summary.md"
tar -czf "$final/targets.tgz" -C "$out" .
