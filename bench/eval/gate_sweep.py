"""Where the similarity gate (sim_threshold) separates structure from noise (issue 11 item 3):
per workload and threshold, the fraction of each head's tiles the gate forces (Stage 1 keeps a
non-self-similar block's whole row, whatever the selection says) and the block sparsity, with the
sampled_rows estimate (4 rows, TopCdf 0.98) deciding the rest. CPU, fp32; one JSON line per
(workload, threshold) and a table.

    python3 bench/eval/gate_sweep.py --head-dim 128 --out gate.jsonl
"""
import argparse
import json

import sparge
from sparge import workloads


def cases(head_dim, heads):
    yield "video (8, 32, 32) natural", workloads.video_grid(1, heads, (8, 32, 32), head_dim, seed=0), None
    yield "video (32, 16, 16) natural", workloads.video_grid(1, heads, (32, 16, 16), head_dim, seed=0), None
    yield "llm-like 8192", workloads.language_like(1, heads, heads, 8192, head_dim, seed=0), None
    yield "random 8192", workloads.random_gaussian(1, heads, heads, 8192, 8192, head_dim, seed=0), None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--thresholds", default="0,0.05,0.1,0.2,0.3,0.6")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows, table = [], []
    for name, w, _ in cases(args.head_dim, args.heads):
        for t in (float(x) for x in args.thresholds.split(",")):
            _, st = sparge.attention(w.q, w.k, w.v, is_causal=w.causal, return_stats=True,
                                     sim_threshold=t, estimate="sampled_rows", sample_rows=4,
                                     cdf_threshold=0.98)
            forced = [round(float(x), 3) for x in st.forced_fraction[0]]
            rows.append(dict(workload=name, head_dim=args.head_dim, heads=args.heads,
                             sim_threshold=t, forced_fraction_per_head=forced,
                             sparsity=st.sparsity))
            table.append(f"| {name} | {t} | {min(forced):.2f}-{max(forced):.2f} | {st.sparsity:.3f} |")
    for r in rows:
        print(json.dumps(r))
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"| workload (hd {args.head_dim}, {args.heads} heads) | sim_threshold | forced per head | sparsity |")
    print("|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
