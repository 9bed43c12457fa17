#!/usr/bin/env bash
# Configures and builds one build tree.  usage: scripts/build.sh <dir> [cmake args...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$1"; shift
mkdir -p "$dir"  # the configure log sits beside it, so its parent must exist on a fresh clone
cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >"$dir.configure.log" 2>&1 || {
  cat "$dir.configure.log"; exit 1; }
cmake --build "$dir" -j"$(nproc)"
