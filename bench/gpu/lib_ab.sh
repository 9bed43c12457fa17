#!/usr/bin/env bash
# One device call comparing prebuilt libraries on the quantized and the exact path (quant_ab.sh
# builds source trees on the device; this takes libraries built here and carried, which saves
# the device minutes of the build). Usage (repo root, device call with carry .devpack):
#   LIBS="base=/tmp/ab/base.so work=/tmp/bins/libsparge_c.so ..." bash bench/gpu/lib_ab.sh <commit>
# .devpack/bins.tgz (libsparge_c.so + sparge_gpu_tests of the working tree) is unpacked to
# /tmp/bins and .devpack/ab.tgz (the other libraries, e.g. SPARGE_FAST_BUILD ones) to /tmp/ab.
# First the working tree's GPU tests (GTEST_FILTER, default every test), then per library
# bench_attention.py --quant (hd 128, N 8K and 32K, random block sparsity 0 and 0.9, cuDNN
# and the exact sm90ws kernel in the same process), twice in alternating order, so that
# drift shows up as a difference between the rounds. CAUSAL=false|true|both (default both; a
# SPARGE_FAST_BUILD library has no causal instances). Records and logs: $OUT/ab.tgz; the table
# (the median of the rounds per cell): $OUT/summary.md.
source bench/gpu/device_prelude.sh
mkdir -p /tmp/ab && { [ ! -f .devpack/ab.tgz ] || tar xzf .devpack/ab.tgz -C /tmp/ab; }
out=$(mktemp -d); logs=$out/logs; mkdir -p "$logs"
timeout -k 5 200 /tmp/bins/sparge_gpu_tests --gtest_filter="${GTEST_FILTER:-*}" >"$logs/gpu_tests.log" 2>&1
el "gpu tests rc=$?: $(grep -E '^\[  (PASSED|FAILED) ' "$logs/gpu_tests.log" | tr '\n' ' ')"
grep -E "^\[  FAILED  \]|Failure|rel L1" "$logs/gpu_tests.log" | grep -i -E "fail|quant" | sort -u | head -12
names=()
for entry in ${LIBS:?LIBS}; do names+=("${entry%%=*}"); done
for round in 1 2; do
  order=("${names[@]}")
  [ "$round" = 2 ] && order=($(printf '%s\n' "${names[@]}" | tac))
  for n in "${order[@]}"; do
    for entry in ${LIBS}; do [ "${entry%%=*}" = "$n" ] && lib=${entry#*=}; done
    timeout -k 5 150 python3 bench/gpu/bench_attention.py --lib "$lib" --commit "$n" \
      --kernels sm90ws --quant --no-flex --head-dim 128 --seqs 8192,32768 --sparsities 0,0.9 \
      --causal "${CAUSAL:-both}" \
      --out-dir "$out" --results-dir "" --tag "lib-ab-r${round}_$n" >"$logs/bench_r${round}_$n.log" 2>&1
    el "bench round $round $n rc=$?"
  done
done
python3 - "$out" "${names[@]}" <<'PY' | tee "$OUT/summary.md"
import glob, json, statistics, sys
out, names = sys.argv[1], sys.argv[2:]
cells, errs = {}, {}
for f in glob.glob(out + "/*lib-ab-r*.jsonl"):
    for line in open(f):
        r = json.loads(line)
        if r["sparsity"] is None:  # Stage 1 alone
            continue
        impl = r["impl"]
        who = impl.replace("sdpa-", "") if not impl.startswith("sparge") else f"{r['commit']}:{impl[7:]}"
        key = (r["seq_q"], r["causal"], round(r["sparsity"], 1))
        cells.setdefault(key, {}).setdefault(who, []).append(r["tops"])
        if impl == "sparge-quant":  # error against fp32 (dense) or the exact call (same mask)
            e = r["rel_l1"] if r["rel_l1"] is not None else r.get("rel_l1_vs_exact_same_mask")
            errs.setdefault(key, {}).setdefault(r["commit"], []).append(e)
cols = ["cudnn"] + [f"{n}:{i}" for n in names for i in ("exact", "quant")]
print("TOPS, median of the rounds (each cell's runs in brackets)\n")
print("| N | causal | s | " + " | ".join(cols) + " |")
print("|---|---|---|" + "---|" * len(cols))
for k in sorted(cells):
    row = []
    for c in cols:
        v = cells[k].get(c)
        row.append(f"{statistics.median(v):.0f} ({'/'.join(f'{x:.0f}' for x in v)})" if v else "-")
    print(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(row) + " |")
print("\nQuantized rel L1: against fp32 at s 0, against the exact call on the same mask at s 0.9\n")
print("| N | causal | s | " + " | ".join(names) + " |")
print("|---|---|---|" + "---|" * len(names))
for k in sorted(errs):
    print(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(
        f"{max(errs[k][n]):.4f}" if errs[k].get(n) else "-" for n in names) + " |")
PY
tar -czf "$OUT/ab.tgz" -C "$out" .
