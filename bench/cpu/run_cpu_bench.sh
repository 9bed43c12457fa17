#!/usr/bin/env bash
# Builds and runs bench/cpu/bench_cpu_attention, then writes
#   bench/results/<yyyy-mm-dd>_<cpu-model-slug>_cpu-attention.jsonl  (docs/bench-schema.md records)
#   bench/results/<yyyy-mm-dd>_<cpu-model-slug>_cpu-attention.md     (the same as a table)
# with the median of REPS repetitions per case. Environment: BUILD_DIR (default build-bench),
# REPS (default 5), JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build-bench}
REPS=${REPS:-5}
JOBS=${JOBS:-2}

cmake -S . -B "$BUILD_DIR" -DSPARGE_WITH_CUDA=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j"$JOBS" --target bench_cpu_attention >/dev/null

date_iso=$(date +%F)
cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
slug=$(echo "$cpu_model" | tr '[:upper:]' '[:lower:]' | sed 's/[^a-z0-9]\+/-/g; s/^-//; s/-$//')
commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- src include bench/cpu || commit="$commit-dirty"
threads=$(nproc)
out="bench/results/${date_iso}_${slug}_cpu-attention"
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT

# Random interleaving spreads each case's repetitions over the run, so load from other
# processes hits every case alike instead of one case's whole block.
"$BUILD_DIR/bench/bench_cpu_attention" --benchmark_repetitions="$REPS" \
  --benchmark_enable_random_interleaving=true \
  --benchmark_format=json --benchmark_out="$raw" --benchmark_out_format=json >/dev/null

python3 - "$raw" "$out" "$date_iso" "$cpu_model" "$commit" "$threads" "$REPS" <<'EOF'
import json, statistics, sys
raw, out, date, device, commit, threads, reps = sys.argv[1:]
runs = {}
for b in json.load(open(raw))["benchmarks"]:
    if b.get("run_type") != "iteration":
        continue
    runs.setdefault(b["run_name"], []).append(b)

def median(rs, key):
    return statistics.median(r[key] for r in rs)

def ms(rs):  # real_time is in the benchmark's unit (ms)
    return median(rs, "real_time")

records = []
dense_ms = {}
dense_cpu_ms = {}
for name, rs in runs.items():
    if name.startswith("BM_SpargeCpu") and rs[0]["sparsity"] == 0:
        dense_ms[rs[0]["label"]] = ms(rs)
        dense_cpu_ms[rs[0]["label"]] = median(rs, "cpu_ms")
for name, rs in runs.items():
    r0 = rs[0]
    base = {"date": date, "device": device, "commit": commit, "threads": int(threads),
            "repetitions": len(rs)}
    if name.startswith("BM_SpargeCpu"):
        B, H, N, D = (int(r0[k]) for k in ("B", "H", "N", "D"))
        t = ms(rs)
        rec = dict(base, impl="sparge-cpu", workload="random", dtype=r0["label"], head_dim=D,
                   batch=B, heads_q=H, heads_kv=H, seq_q=N, seq_k=N, causal=False,
                   sparsity=round(r0["sparsity"], 4), ms=round(t, 3),
                   tops=round(4.0 * B * H * N * N * D / (t * 1e-3) / 1e12, 5),
                   gflops=round(4.0 * B * H * N * N * D / (t * 1e-3) / 1e9, 2),
                   rel_l1=None, cos_sim=None, block_q=128, block_k=64,
                   cpu_ms=round(median(rs, "cpu_ms"), 3),
                   cpu_gflops=round(4.0 * B * H * N * N * D / (median(rs, "cpu_ms") * 1e-3) / 1e9, 2))
        if r0["sparsity"] > 0 and r0["label"] in dense_ms:
            rec["time_vs_dense"] = round(t / dense_ms[r0["label"]], 4)
            rec["cpu_time_vs_dense"] = round(median(rs, "cpu_ms") / dense_cpu_ms[r0["label"]], 4)
            rec["target_ratio"] = round((1 - r0["sparsity"]) / 0.8, 4)
        records.append(rec)
    elif name.startswith("BM_OpenBlasSgemm"):
        M, N, K = (int(r0[k]) for k in ("M", "N", "K"))
        t = ms(rs)
        records.append(dict(base, impl="openblas-sgemm", workload=f"sgemm {M}x{N}x{K}",
                            dtype="float32", head_dim=None, batch=None, heads_q=None,
                            heads_kv=None, seq_q=None, seq_k=None, causal=None, sparsity=0.0,
                            ms=round(t, 3), tops=round(2.0 * M * N * K / (t * 1e-3) / 1e12, 5),
                            gflops=round(2.0 * M * N * K / (t * 1e-3) / 1e9, 2),
                            rel_l1=None, cos_sim=None, m=M, n=N, k=K,
                            cpu_ms=round(median(rs, "cpu_ms"), 3),
                            cpu_gflops=round(2.0 * M * N * K / (median(rs, "cpu_ms") * 1e-3) / 1e9, 2)))
with open(out + ".jsonl", "w") as f:
    for r in records:
        f.write(json.dumps(r) + "\n")

best_sgemm = max((r["gflops"] for r in records if r["impl"] == "openblas-sgemm"), default=None)
best_sgemm_cpu = max((r["cpu_gflops"] for r in records if r["impl"] == "openblas-sgemm"),
                     default=None)
lines = [f"# CPU attention, {device}, {threads} threads, commit {commit}, {date}", "",
         f"Median of {reps} repetitions (`bench/cpu/run_cpu_bench.sh`). GFLOP/s is "
         "dense-equivalent (4·B·H·N²·D / time); time_vs_dense is the goal's left side, "
         "target = (1 − sparsity)/0.8. The cpu columns use process CPU time / threads, which "
         "other jobs on a shared machine do not inflate.", "",
         f"Load average at the end of the run: {open('/proc/loadavg').read().split()[0]}.", "",
         "| impl | case | dtype | sparsity | ms | GFLOP/s | vs best SGEMM | time_vs_dense "
         "| cpu ms | cpu GFLOP/s | cpu vs best SGEMM | cpu time_vs_dense | target |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in records:
    case = (f"B{r['batch']} H{r['heads_q']} N{r['seq_q']} D{r['head_dim']}"
            if r["impl"] == "sparge-cpu" else r["workload"])
    rel = f"{r['gflops'] / best_sgemm:.2f}" if best_sgemm else "-"
    rel_cpu = f"{r['cpu_gflops'] / best_sgemm_cpu:.2f}" if best_sgemm_cpu else "-"
    lines.append(f"| {r['impl']} | {case} | {r['dtype']} | {r['sparsity']:.3f} | {r['ms']:.1f} | "
                 f"{r['gflops']:.1f} | {rel} | {r.get('time_vs_dense', '-')} | "
                 f"{r['cpu_ms']:.1f} | {r['cpu_gflops']:.1f} | {rel_cpu} | "
                 f"{r.get('cpu_time_vs_dense', '-')} | {r.get('target_ratio', '-')} |")
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "wrote $out.jsonl and $out.md"
