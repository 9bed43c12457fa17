#!/usr/bin/env bash
# Builds Sparge (CPU) and runs `sparge demo` on the embedded default workload.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/setup.sh"
bash "$root/scripts/build.sh" "$root/build/cpu" -DSPARGE_WITH_CUDA=OFF -DSPARGE_BUILD_TESTS=OFF
"$root/build/cpu/sparge" demo "$@"
