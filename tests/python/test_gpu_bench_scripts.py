"""The GPU benchmarks of issue 14 with --device cpu on small shapes (bench/gpu/bench_long.py,
bench_decode.py): their code paths (references, records) checked before a device run spends GPU
time on them."""
import json
import pathlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("workload", ["random", "llm"])
def test_the_long_sequence_benchmark_runs_on_cpu(workload):
    script = pathlib.Path(__file__).resolve().parents[2] / "bench" / "gpu" / "bench_long.py"
    run = subprocess.run([sys.executable, str(script), "--device", "cpu", "--tokens", "1000",
                          "--heads", "2", "--head-dim", "32", "--rows", "8", "--reps", "1",
                          "--workload", workload], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    impls = {(r["impl"], r["causal"]) for r in records}
    causal = [True] if workload == "llm" else [False, True]
    assert impls == {(i, c) for i in ("sparge-exact", "sparge-exact-dense") for c in causal}
    for r in records:
        assert r["seq_q"] == r["seq_k"] == 1000 and r["ms"] > 0
        if r["impl"] == "sparge-exact-dense":  # nothing skipped: float32 attention of the rows
            assert r["sparsity"] == 0.0 and r["rel_l1"] < 1e-5, r
        else:
            assert 0.5 < r["sparsity"] < 1.0, r


def test_the_decode_benchmark_runs_on_cpu():
    script = pathlib.Path(__file__).resolve().parents[2] / "bench" / "gpu" / "bench_decode.py"
    run = subprocess.run([sys.executable, str(script), "--device", "cpu", "--keys", "3000",
                          "--batch", "2", "--heads", "4", "--heads-kv", "2", "--head-dim", "32",
                          "--reps", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert {(r["impl"], r["topk"]) for r in records} == {
        ("sparge-exact", 0.1), ("sparge-exact", 1.0), ("sparge-step", 0.1),
        ("sparge-step-keyblocks", 0.1)}
    for r in records:
        if r["impl"].startswith("sparge-step"):  # both stages: Stage 2's output on Stage 1's mask
            assert r["max_abs_diff"] == 0.0, r
        assert r["seq_k"] == 3000 and r["ms"] > 0 and r["kept_bytes"] > 0
        if r["topk"] == 1.0:  # nothing skipped: SDPA's output, all keys read
            assert r["sparsity"] == 0.0 and r["rel_l1"] < 1e-5, r
            assert r["kept_bytes"] == 2 * 2 * 4 * 3000 * 32 * 4, r
        else:
            assert r["sparsity"] > 0.5, r


def test_the_defaults_benchmark_runs_on_cpu():
    """bench_defaults.py: a record per (workload, setting) beside SDPA's; on random inputs every
    setting's gate forces every tile (nothing skipped, SDPA's output)."""
    script = pathlib.Path(__file__).resolve().parents[2] / "bench" / "gpu" / "bench_defaults.py"
    run = subprocess.run([sys.executable, str(script), "--device", "cpu", "--seqs", "1024",
                          "--heads", "2", "--head-dim", "32", "--reps", "1", "--rounds", "2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    # Two interleaved rounds: each record keeps both rounds' medians, and its time is theirs.
    for r in records:
        assert len(r["round_ms"]) == 2 and r["ms"] == sum(r["round_ms"]) / 2, r
    workloads = {"video", "video-hilbert", "llm", "random"}
    assert {r["workload"] for r in records if r["impl"] == "sdpa"} == workloads
    settings = {r.get("setting") for r in records if r["impl"] == "sparge-exact"}
    assert settings == {"today", "pooled-sim0.3", "rows4-cdf0.98-sim0.3", "rows8-cdf0.98-sim0.3"}
    for r in records:
        assert r["seq_q"] == 1024 and r["ms"] > 0
        if r["impl"] == "sparge-exact" and r["workload"] == "random":
            assert r["sparsity"] == 0.0 and r["forced_fraction"] == 1.0 and r["rel_l1"] < 1e-5, r
        if r["impl"] == "sparge-exact" and r["workload"] == "llm":
            assert r["causal"] and r["sparsity"] > 0.3, r
