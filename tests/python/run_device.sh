#!/usr/bin/env bash
# The GPU machine's run (no network there): pip install . with the CUDA kernels against its
# PyTorch, every Python test (GPU-only ones included), the MiniLM check and the device report.
# Logs and docs/bench-schema.md records go to $OUT. usage: bash tests/python/run_device.sh
#   SPARGE_MINILM_DIR  the all-MiniLM-L6-v2 files (carried; the wheel does not fit a carry)
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-/tmp/sparge-device}"
mkdir -p "$out"
cd "$root"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONFAULTHANDLER=1
nvidia-smi -L
python3 -c "import torch, transformers as t; print('torch', torch.__version__, t.__version__)"
# The image's $CXX (/opt/gcc) links libstdc++ statically: the extension then holds a second
# copy whose locale facets are not initialized, and the first `ostream << int` crashes. The
# system compiler links the shared libstdc++ that PyTorch uses.
export CXX=/usr/bin/g++ CC=/usr/bin/gcc
rm -rf python/build
start=$(date +%s)
SPARGE_WITH_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="${MAX_JOBS:-16}" \
  python3 -m pip install -q --no-deps --disable-pip-version-check . >"$out/install.log" 2>&1 \
  || { tail -50 "$out/install.log"; exit 1; }
echo "pip install . took $(($(date +%s) - start)) s"
python3 -c "import sparge; print(sparge.build_info()); print('CUDA head dims', sparge.CUDA_HEAD_DIMS)"
(cd tests/python && python3 -m pytest -q -p no:cacheprovider -rs --junitxml="$out/pytest.xml" \
  2>&1 | tee "$out/pytest.log" | tail -25)
(cd tests/python && python3 minilm_check.py --device cuda --dtype float16 \
  --jsonl "$out/minilm.jsonl" 2>&1 | grep -v "Loading weights")
(cd tests/python && timeout 240 python3 device_report.py --jsonl "$out/report.jsonl")
echo "device run took $(($(date +%s) - start)) s"
