#!/usr/bin/env bash
# Builds a binary wheel of the sparge PyTorch package into dist/: the C++ core, the binding and,
# with CUDA, the kernels for every arch of TORCH_CUDA_ARCH_LIST (default "8.0;9.0a;10.0a;12.0+PTX":
# sm_80 code that runs on every GPU from Ampere on, the Hopper kernels, and sm_100a / sm_120 code,
# compiled but not yet run on such a GPU, with sm_120 PTX for later ones). A wheel is tied to the Python
# version and the torch build (version and CUDA major) of the interpreter that builds it: build
# it with the python that will import it.
#   PYTHON              the interpreter (default python3); its torch must be installed
#   SPARGE_WITH_CUDA    1 (default here) | 0 (CPU-only wheel)
#   TORCH_CUDA_ARCH_LIST, MAX_JOBS   as for setup.py
# Usage: bash scripts/build_wheel.sh   ->  dist/sparge-<version>-cp<py>-cp<py>-linux_x86_64.whl
# Installing it needs no compiler: pip install --no-deps dist/sparge-*.whl (docs/python.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"
export SPARGE_WITH_CUDA="${SPARGE_WITH_CUDA:-1}"
[ "$SPARGE_WITH_CUDA" = 1 ] && export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0a;10.0a;12.0+PTX}"
mkdir -p "$root/dist"
start=$(date +%s)
"$py" -m pip wheel "$root" --no-build-isolation --no-deps -w "$root/dist"
echo "== wheel in $(( $(date +%s) - start )) s:"
ls -la "$root"/dist/sparge-*.whl
