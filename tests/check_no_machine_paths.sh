#!/usr/bin/env bash
# Fails when a tracked text file names a path of one particular machine: an absolute path under
# the workplace root, or the shared folder beside the repository (dot-dot, "shared"). Documents the
# project relies on live in the repository (the record schema: docs/bench-schema.md).
# bench/results/ is left out: its records and generated READMEs are history, kept as written.
# usage: check_no_machine_paths.sh [repository root]; exit 77 (skipped) outside a git checkout.
set -euo pipefail
root="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
if ! command -v git >/dev/null || ! git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
  echo "not a git checkout (or no git): nothing to check"
  exit 77
fi
# Split so that this file does not match itself.
workplace="/""work/"
shared="\.\./""shared/"
# An absolute path: the root at the start of a line or after a character that cannot end a name.
pattern="(^|[^A-Za-z0-9_.~-])${workplace}|${shared}"
if hits=$(git -C "$root" grep -n -I -E "$pattern" -- . ':(exclude)bench/results'); then
  echo "tracked files name a machine-specific path (cite the file in the repository instead):"
  echo "$hits"
  exit 1
fi
echo "no machine-specific paths in tracked files"
