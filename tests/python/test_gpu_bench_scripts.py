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
