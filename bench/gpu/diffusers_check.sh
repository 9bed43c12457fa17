#!/usr/bin/env bash
# One H200 call for issue 13: a diffusers video DiT (Wan2.1-1.3B geometry, 4 layers, random
# weights) with the "sparge" attention backend against diffusers' default, at 32760 video tokens
# (81 frames at 480x832: latents 21x60x104) and at 17160 (41 frames: 11x60x104), by
# bench/gpu/bench_diffusers.py. Installs diffusers from carried wheels and Sparge with CUDA first.
# Logs and records go to $OUT as diffusers_check.tgz, plus the two benchmark logs.
#
# Usage (repo root, device call with carry .wheels): bash bench/gpu/diffusers_check.sh <commit>
#
# The device has no network and no diffusers. Fill .wheels here (git ignores it) first:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp -d .wheels diffusers==0.42.1
# diffusers is pure Python, and its other runtime needs are on the device (huggingface-hub
# >= 1.32, safetensors >= 0.8, numpy, regex, requests, Pillow, filelock): importlib_metadata is
# imported only on Python < 3.8 (diffusers/utils/import_utils.py), and the device's is 3.12.
set -uo pipefail
name=${1:?commit name}
root="$(cd "$(dirname "$0")/../.." && pwd)"
out=${OUT:-/tmp/sparge_out}; mkdir -p "$out"
logs=$(mktemp -d)
cd "$root" || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONFAULTHANDLER=1
finish() {
  tar -czf "$out/diffusers_check.tgz" -C "$logs" . && cp "$logs"/bench_*.log "$out/" 2>/dev/null
  echo "done ($SECONDS s); files in $out:"; ls "$out"
}
trap finish EXIT
nvidia-smi -L

ls .wheels/*.whl >/dev/null 2>&1 || { echo "error: no .wheels/*.whl (carry .wheels; see the top of $0)"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .wheels/*.whl >"$logs/wheels.log" 2>&1 \
  || { tail -20 "$logs/wheels.log"; echo "error: installing .wheels failed"; exit 1; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch, diffusers, huggingface_hub as h; print('torch', torch.__version__, \
'diffusers', diffusers.__version__, 'huggingface_hub', h.__version__)" || exit 1
echo "wheels installed ($SECONDS s)"

# The image's /opt/gcc links libstdc++ statically (tests/python/run_device.sh says why not).
export CXX=/usr/bin/g++ CC=/usr/bin/gcc
rm -rf python/build
SPARGE_WITH_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="$(nproc)" \
  timeout 240 python3 -m pip install -q --no-deps --disable-pip-version-check . \
  >"$logs/install.log" 2>&1 || { tail -40 "$logs/install.log"; echo "error: pip install . failed"; exit 1; }
echo "pip install . rc=0 ($SECONDS s)"

# Run outside the tree so that the installed package is the one imported.
for frames in 21 11; do
  (cd /tmp && timeout 120 python3 "$root/bench/gpu/bench_diffusers.py" --commit "$name" \
    --frames "$frames" --height 60 --width 104 --out-dir "$logs") >"$logs/bench_f$frames.log" 2>&1
  rc=$?
  # The tables (from the line that names the model) and any error.
  sed -n '/^## /,$p' "$logs/bench_f$frames.log"
  [ "$rc" = 0 ] || { tail -30 "$logs/bench_f$frames.log"; echo "bench_diffusers.py rc=$rc"; }
  echo "frames $frames: rc=$rc ($SECONDS s)"
done
