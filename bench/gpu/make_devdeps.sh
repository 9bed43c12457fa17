#!/usr/bin/env bash
# The GPU machine's image may lack GoogleTest, and nothing downloads there: unpack Debian's
# libgtest-dev and libgmock-dev into .devdeps/ (ignored by git; add `/.devdeps/` to
# .git/info/exclude) and name `.devdeps` in the device call's carry. check_sm90ws.sh and
# run_device.sh point CMake at it when /usr/include/gtest is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
debs="$(mktemp -d)"
(cd "$debs" && apt-get download libgtest-dev libgmock-dev)
rm -rf "$root/.devdeps"
for deb in "$debs"/*.deb; do dpkg -x "$deb" "$root/.devdeps"; done
rm -rf "$debs"
echo "unpacked into $root/.devdeps ($(du -sh "$root/.devdeps" | cut -f1))"
