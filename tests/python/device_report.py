"""Accuracy and time of the Python entry points on a GPU, as docs/bench-schema.md records.

For each case: sparge.attention (both stages, through the torch op, head-dim padding included)
and PyTorch's SDPA on the same inputs; rel_l1 and cos_sim against float32 SDPA. Inputs are the
clustered workload of the tests (smooth drift along the tokens), so Stage 1 finds structure.

    python tests/python/device_report.py --jsonl OUT.jsonl
"""
import argparse
import datetime
import json
import math
import subprocess

import torch
import torch.nn.functional as F

import sparge
from sparge import measure

CASES = [  # (head_dim, seq, causal)
    (128, 8192, False), (128, 8192, True), (64, 8192, False), (32, 8192, False),
]
SETTINGS = {
    "sparge-exact": dict(sim_threshold=1.0, pv_threshold=math.inf),
    "sparge-sparse": dict(sim_threshold=0.3, cdf_threshold=0.9, pv_threshold=15.0),
}


def workload(head_dim, seq, heads=16, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    drift = torch.linspace(-2, 2, seq, device="cuda").view(1, 1, seq, 1)

    def rand():
        return torch.randn((1, heads, seq, head_dim), generator=gen, device="cuda")

    return rand() * 0.3 + drift, rand() * 0.3 + drift, rand()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jsonl", required=True)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    base = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
                commit=commit, workload="clustered-drift", dtype="bfloat16", batch=1,
                heads_q=16, heads_kv=16, api="python")
    records = []
    for head_dim, seq, causal in CASES:
        q, k, v = workload(head_dim, seq)
        reference = F.scaled_dot_product_attention(q, k, v, is_causal=causal).double()
        qb, kb, vb = (t.bfloat16() for t in (q, k, v))
        shape = dict(head_dim=head_dim, seq_q=seq, seq_k=seq, causal=causal)
        runs = {"sdpa": (lambda: F.scaled_dot_product_attention(qb, kb, vb, is_causal=causal),
                         None)}
        for impl, opts in SETTINGS.items():
            runs[impl] = (lambda opts=opts: sparge.attention(qb, kb, vb, is_causal=causal,
                                                             **opts), opts)
        for impl, (fn, opts) in runs.items():
            out = fn().double()
            sparsity = 0.0
            if opts is not None:
                sparsity = sparge.attention(qb, kb, vb, is_causal=causal, return_stats=True,
                                            **opts)[1].sparsity
            ms = measure.time_ms(fn, warmup=1, reps=10, device="cuda")
            err = measure.errors(out, reference)
            rel_l1, cos = err["rel_l1"], err["cos_sim"]
            tops = measure.dense_tops(dict(base, **shape), causal, ms)
            records.append(dict(base, **shape, impl=impl, sparsity=round(sparsity, 4),
                                ms=round(ms, 4), tops=round(tops, 1),
                                rel_l1=round(rel_l1, 6), cos_sim=round(cos, 6)))
            print(f"d{head_dim} N{seq} causal={causal!s:5} {impl:14} sparsity {sparsity:.3f} "
                  f"{ms:8.3f} ms rel_l1 {rel_l1:.2e} cos {cos:.6f}", flush=True)
    with open(args.jsonl, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
    main()
