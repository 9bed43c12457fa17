#!/usr/bin/env bash
# Builds Sparge (CPU) and runs `sparge demo` on the embedded default workload.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/build_configs.sh"
bash "$root/scripts/setup.sh"
bash "$root/scripts/build.sh" "$root/build/cpu" "${demo_cpu_config[@]}"
"$root/build/cpu/sparge" demo "$@"
