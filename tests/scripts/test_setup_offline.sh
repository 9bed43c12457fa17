#!/usr/bin/env bash
# scripts/setup.sh on a provisioned machine (CI, after its first setup) reaches no package
# manager, so it works offline and without apt-get; where apt-get is absent and something the
# build needs is missing, it names the missing package and fails.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $0: $*" >&2; exit 1; }

# 1. Everything installed: apt-get, apt and sudo are stubs that fail loudly if called.
mkdir "$tmp/stubs"
for tool in apt-get apt sudo; do
  printf '#!/bin/sh\necho "stub %s called: $*" >&2\nexit 97\n' "$tool" >"$tmp/stubs/$tool"
  chmod +x "$tmp/stubs/$tool"
done
rc=0
out="$(PATH="$tmp/stubs:$PATH" bash "$root/scripts/setup.sh" 2>&1)" || rc=$?
[ "$rc" = 0 ] || fail "with apt-get stubbed, setup.sh exited $rc: $out"
[ -z "$out" ] || fail "with everything installed, setup.sh printed: $out"

# 2. No apt-get, sudo or cmake on the PATH: a clear message naming cmake, and a failure.
mkdir "$tmp/bin"
for tool in g++ id; do
  ln -s "$(command -v "$tool")" "$tmp/bin/$tool"
done
rc=0
out="$(PATH="$tmp/bin" "$BASH" "$root/scripts/setup.sh" 2>&1)" || rc=$?
[ "$rc" = 1 ] || fail "without cmake and apt-get, setup.sh exited $rc (want 1): $out"
[[ "$out" == *"apt-get is not available"*cmake* ]] || fail "no clear message: $out"
[[ "$out" == *"error: the build needs cmake"* ]] || fail "cmake not named as needed: $out"
echo "ok: setup.sh calls no package manager when everything is installed"
