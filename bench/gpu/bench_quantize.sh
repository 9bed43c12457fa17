#!/usr/bin/env bash
# Builds and times the CUDA quantization pass (issue 10) on this machine's GPU:
#   bench/results/<yyyy-mm-dd>_<gpu-name>_quantize-pass-<commit>.jsonl  (docs/bench-schema.md)
# and a short table on stdout (ms, GB/s, bytes against reading Q and K once).
# Environment: BUILD_DIR (default build-bench-gpu), REPS (default 50), JOBS (default nproc).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build-bench-gpu}
REPS=${REPS:-50}
JOBS=${JOBS:-$(nproc)}

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DSPARGE_WITH_CUDA=ON -DSPARGE_FAST_BUILD=ON \
  -DSPARGE_BUILD_BENCH=ON -DSPARGE_BUILD_TESTS=OFF -DSPARGE_BUILD_TOOLS=OFF >/dev/null
cmake --build "$BUILD_DIR" -j"$JOBS" --target bench_quantize >/dev/null

commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- src include bench/gpu || commit="$commit-dirty"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-')
out="bench/results/$(date +%F)_${gpu}_quantize-pass-${commit}.jsonl"
"$BUILD_DIR/bench/bench_quantize" --reps "$REPS" --commit "$commit" | tee "$out"
python3 - "$out" <<'PY'
import json, sys
print(f"{'dtype':6} {'Hq/Hkv':>7} {'N':>7} {'D':>4} {'ms':>8} {'GB/s':>7} {'MB moved':>9} {'MB Q+K once':>11}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    moved = (r["bytes_read"] + r["bytes_written"]) / 1e6
    print(f"{r['dtype']:6} {r['heads_q']:>3}/{r['heads_kv']:<3} {r['seq_k']:>7} {r['head_dim']:>4} "
          f"{r['ms']:8.3f} {r['gbps']:7.0f} {moved:9.0f} {r['bytes_read_qk_once'] / 1e6:11.0f}")
PY
echo "wrote $out"
