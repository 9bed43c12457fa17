#!/usr/bin/env bash
# The README's two commands share build/cpu: scripts/demo.sh configures it without tests, and a
# later scripts/test.sh must configure them back, or its ctest stage finds none. Configures
# (without building) a scratch tree in demo.sh's then test.sh's configuration and counts ctest's
# entries: unbuilt, the GoogleTest suite is one placeholder entry; with tests off, there are none.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
source "$root/scripts/build_configs.sh"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $0: $*" >&2; exit 1; }

cmake -S "$root" -B "$tmp" "${demo_cpu_config[@]}" >"$tmp.log" 2>&1 || fail "$(cat "$tmp.log")"
cmake -S "$root" -B "$tmp" "${test_cpu_config[@]}" >"$tmp.log" 2>&1 || fail "$(cat "$tmp.log")"
rm -f "$tmp.log"
count="$(cd "$tmp" && ctest -N 2>/dev/null | sed -n 's/^Total Tests: //p')"
[ "${count:-0}" -gt 0 ] || fail "after demo.sh's configuration, test.sh's configures no tests"
echo "ok: demo.sh then test.sh configures the tests ($count ctest entries before the build)"
