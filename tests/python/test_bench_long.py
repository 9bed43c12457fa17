"""bench/gpu/bench_long.py --device cpu on small lengths: the long-sequence benchmark's code path
(sampled-row references, records) before a device run spends GPU time on it."""
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
