#!/usr/bin/env bash
# One multi-GPU call for issue 16 (nvidia-h200-x2 or -x4): installs Sparge with CUDA, runs the
# CUDA key-block GPU tests first (the ring's Stage 1 takes that path), then bench/gpu/bench_distributed.py at issue 16's
# shape (128K tokens, hd 128, 32 heads, top-k 0.1 with the gate off) for Ulysses, the ring and
# (4 GPUs) the hybrid against one GPU. Records and logs go to $OUT.
#
# Usage (repo root, device call on a multi-GPU kind; carry .devdeps for the GPU tests' gtest):
#   bash bench/gpu/distributed_check.sh <commit> [tokens]
set -uo pipefail
name=${1:?commit name}
tokens=${2:-131072}
root="$(cd "$(dirname "$0")/../.." && pwd)"
out=${OUT:-/tmp/sparge_out}; mkdir -p "$out"
cd "$root" || exit 1
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
nvidia-smi -L
gpus=$(nvidia-smi -L | wc -l)
worlds=2; [ "$gpus" -ge 4 ] && worlds="2 4"

# The image's /opt/gcc links libstdc++ statically (tests/python/run_device.sh says why not).
export CXX=/usr/bin/g++ CC=/usr/bin/gcc
rm -rf python/build
SPARGE_WITH_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="$(nproc)" \
  timeout 300 python3 -m pip install -q --no-deps --disable-pip-version-check . \
  >"$out/install.log" 2>&1 || { tail -40 "$out/install.log"; echo "error: pip install . failed"; exit 1; }
echo "pip install . rc=0 ($SECONDS s)"

# The key-block path on one GPU first: a wrong ring mask would otherwise look like a slow ring.
(cd /tmp && timeout 300 python3 -m pytest -q -x \
  "$root/tests/python/test_key_blocks.py" -k cuda) >"$out/key_blocks_gpu.log" 2>&1
echo "key-block GPU tests rc=$? ($SECONDS s)"; tail -3 "$out/key_blocks_gpu.log"

# The distributed tests on gloo (CPU processes) as CI runs them, then the GPU benchmark.
(cd /tmp && timeout 300 python3 -m pytest -q "$root/tests/python/test_distributed.py" \
  -k "not yunchang") >"$out/test_distributed.log" 2>&1
echo "distributed tests rc=$? ($SECONDS s)"; tail -3 "$out/test_distributed.log"
slug=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '-')
(cd /tmp && timeout 420 python3 "$root/bench/gpu/bench_distributed.py" --world $worlds \
  --tokens "$tokens" --commit "$name" \
  --out "$out/$(date +%F)_${slug}_distributed-${name}.jsonl") 2>&1 | tee "$out/bench_distributed.log" \
  | grep -v '^{'
echo "done ($SECONDS s); files in $out:"; ls "$out"
