#!/usr/bin/env bash
# Device check of a long-call change (row chunks, long rows): long_rows_check.sh (every GPU test,
# base against work at 256K and 1M tokens: Stage 1, whole calls, masks), with the Python package
# built in the background meanwhile, then bench_long.py at 1M tokens with nothing skipped as well
# (sampled rows against float32: the kernel's accuracy at a million tokens; Stage 1 and the
# kernel timed apart). Carry .devpack (bins.tgz, ab.tgz: base.so).
#   bash bench/gpu/long_call_check.sh <commit>
source bench/gpu/device_prelude.sh
install_package_in_background
bash bench/gpu/long_rows_check.sh "$C"
wait $PIP; el "$(tail -1 /tmp/install.log)"
timeout 240 python3 bench/gpu/bench_long.py --commit "$C" --tokens 1048576 --rows 16 --reps 1 \
  --dense-max 1048576 --sdpa-max 0 --out "$OUT/long_1m_$C.jsonl" > "$OUT/long_1m_$C.log" 2>&1
el "long 1M rc=$?"; grep -v '^{' "$OUT/long_1m_$C.log" | tail -8
