"""Stage 1 alone on the GPU, by estimate (pooled, sampled_rows, and the error target): bf16, B 1, H 32, hd 128,
causal, N in {8K, 32K}; the time beside the dense causal kernel's on the same inputs. The inputs are random,
so at the default similarity gate every query block is non-similar and the sampled_rows and error-target
estimates are skipped (their rows time the gated path); bench_whole_call.py --error-target times the
error target with every block similar.

    python3 bench/gpu/bench_stage1.py --lib build-b/libsparge_c.so --commit $(git rev-parse --short HEAD)
"""
import argparse
import datetime
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention import BLOCK_K, BLOCK_Q, Mask, Sparge, time_ms  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--seqs", default="8192,32768")
    ap.add_argument("--out-dir", default=".")
    args = ap.parse_args()
    sp = Sparge(args.lib)
    dev = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    B, H, D = 1, 32, 128
    slug = "".join(ch if ch.isalnum() else "-" for ch in dev).strip("-")
    f = open(os.path.join(args.out_dir, f"{date}_{slug}_stage1-estimates.jsonl"), "w")
    stream = torch.cuda.current_stream().cuda_stream
    print("| N | estimate | Stage 1 ms | dense causal kernel ms | ratio |")
    print("|---|---|---|---|---|")
    for n in [int(x) for x in args.seqs.split(",")]:
        sets = [tuple(torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                for _ in range(2)]
        nq, nk = math.ceil(n / BLOCK_Q), math.ceil(n / BLOCK_K)
        pc = torch.empty(B * H * nq, device="cuda", dtype=torch.int32)
        pi = torch.empty(B * H * nq * nk, device="cuda", dtype=torch.int32)
        mask = Mask(pc.data_ptr(), pi.data_ptr(), 1, 0, B, H, n, n, BLOCK_Q, BLOCK_K)
        out = torch.empty_like(sets[0][0])
        dopts = sp.options(True, pv_threshold=float("inf"), sim_threshold=1.0)
        ws0 = torch.empty(sp.workspace_size(sets[0][0], sets[0][1], dopts), device="cuda", dtype=torch.uint8)
        sp.predict(sets[0][0], sets[0][1], dopts, mask, ws0, stream)  # sim 1: every allowed tile
        ms_dense = time_ms(lambda st: sp.attention(st[0], st[1], st[2], mask, dopts, out, stream), sets, 10)
        # The error target (target_error 0.02, SparseOptions) estimates with v too.
        for est in ("pooled", "sampled_rows", "target_error"):
            kw = dict(target_error=0.02) if est == "target_error" else \
                dict(estimate={"pooled": 0, "sampled_rows": 1}[est])
            opts = sp.options(True, **kw)
            ws = torch.empty(sp.workspace_size(sets[0][0], sets[0][1], opts), device="cuda", dtype=torch.uint8)
            ms = time_ms(lambda st: sp.predict(st[0], st[1], opts, mask, ws, stream, v=st[2]), sets, 10)
            rec = dict(date=date, device=dev, commit=args.commit, workload="random", dtype="bf16",
                       head_dim=D, batch=B, heads_q=H, heads_kv=H, seq_q=n, seq_k=n, causal=True,
                       impl=f"sparge-stage1-{est}", ms=ms, tops=None, sparsity=None, rel_l1=None,
                       cos_sim=None, dense_causal_kernel_ms=ms_dense)
            f.write(json.dumps(rec) + "\n")
            print(f"| {n} | {est} | {ms:.3f} | {ms_dense:.3f} | {ms / ms_dense:.3f} |", flush=True)
    f.close()


if __name__ == "__main__":
    main()
