"""Candidate defaults on the committed real-model captures (issue 11 item 3): per capture set,
the layers' pooled relative L1 (sum of |o - ref| over sum of |ref|), block sparsity (skipped over
computable tiles) and the tiles the similarity gate forced, for the library's defaults and the
candidates of bench/gpu/bench_defaults.py. CPU, fp32, the captures' own scale and causality.

    python3 bench/eval/real_defaults.py --out real-defaults.jsonl
"""
import argparse
import json
import os
import sys

import torch

import sparge

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpu"))
from bench_defaults import SETTINGS  # noqa: E402
from real_models import capture  # noqa: E402
from reference import reference_attention  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", default="minilm,smollm2")
    ap.add_argument("--settings", default="today,pooled-sim0.1,rows4-cdf0.98-sim0.1,rows8-cdf0.98-sim0.1")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows, table = [], []
    for src in args.sources.split(","):
        caps = capture(src, "cpu", torch.float32, from_file=True)
        refs = [reference_attention(c.q, c.k, c.v, scale=c.scale, causal=c.causal) for c in caps]
        for label in args.settings.split(","):
            err = norm = skipped = tiles = forced = 0.0
            for c, ref in zip(caps, refs):
                out, st = sparge.attention(c.q, c.k, c.v, scale=c.scale, is_causal=c.causal,
                                           return_stats=True, **SETTINGS[label])
                err += float((out.float() - ref).abs().sum())
                norm += float(ref.abs().sum())
                computable = int(st.block_mask.allowed_key_blocks().sum()) * c.q.shape[1]
                skipped += st.sparsity * computable
                tiles += computable
                forced += float(st.forced_tiles.sum()) if st.forced_tiles is not None else 0.0
            r = dict(source=src, layers=len(caps), tokens=int(caps[0].q.shape[2]), setting=label,
                     options=SETTINGS[label], rel_l1=err / norm, sparsity=skipped / tiles,
                     forced_fraction=forced / tiles)
            rows.append(r)
            table.append(f"| {src} ({len(caps)} inputs, {r['tokens']} tokens) | {label} | "
                         f"{r['sparsity']:.3f} | {r['rel_l1']:.4f} | {r['forced_fraction']:.2f} |")
    for r in rows:
        print(json.dumps(r))
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print("| captures | setting | sparsity | rel L1 (pooled) | forced |")
    print("|---|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
