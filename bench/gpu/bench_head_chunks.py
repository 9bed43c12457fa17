"""Per-head thresholds beyond CUDA's kernel-parameter bound (issue 14, item 6): a call with more
than 256 query heads and per-head options runs as head chunks of ≤ 256 heads (src/common/
head_chunks.h). This times sparge_sparse_attention with one top-k value per head (cut into chunks)
against the same value given once (one call, not cut), on the same inputs in one process, and
checks that the two outputs are bit-equal (the chunks are the whole call's problem, head by head).

bf16, B 1, hd 128, random Gaussian inputs, top-k with the gate off (sim −1), causal and not; CUDA
events, median after warm-up. Through libsparge_c.so (ctypes), no package install.

    python3 bench/gpu/bench_head_chunks.py --lib build/libsparge_c.so --commit $(git rev-parse --short HEAD)
"""
import argparse
import ctypes as C
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_attention as ba  # noqa: E402  (the ctypes wrapper and measure)
from bench_fused_stage1 import sparse_call  # noqa: E402
from jsonl_out import add_run_args, record_path, write_jsonl  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(ap)
    ap.add_argument("--heads", default="512,1024", help="query heads per case (KV heads = query heads / 8)")
    ap.add_argument("--seq", type=int, default=4096)
    args = ap.parse_args()

    torch.manual_seed(0)
    sp = ba.Sparge(args.lib)
    sp.lib.sparge_options_set_per_head.argtypes = [C.c_void_p, C.c_char_p, C.POINTER(C.c_float), C.c_char_p,
                                                   C.c_size_t]
    dev = torch.cuda.get_device_name()
    stream = torch.cuda.current_stream().cuda_stream
    N, D = args.seq, args.head_dim
    records = []
    for H in (int(h) for h in args.heads.split(",")):
        Hkv = max(1, H // 8)
        q = torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, Hkv, N, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, Hkv, N, D, device="cuda", dtype=torch.bfloat16)
        per_head_values = (C.c_float * H)(*([args.topk] * H))
        for causal in (False, True):
            uniform = sp.options(causal, select=1, select_value=args.topk, sim_threshold=-1.0)
            per_head = sp.options(causal, select=1, select_value=args.topk, sim_threshold=-1.0)
            sp.check(sp.lib.sparge_options_set_per_head(per_head, b"select_value", per_head_values, sp.err,
                                                        C.c_size_t(len(sp.err))), "per-head select_value")
            ws_bytes = max(sp.workspace_size(q, k, uniform, caller_mask=False),
                           sp.workspace_size(q, k, per_head, caller_mask=False))
            ws = torch.empty(ws_bytes, device="cuda", dtype=torch.uint8)
            o_uniform, o_chunks = torch.full_like(q, float("nan")), torch.full_like(q, float("nan"))
            sparse_call(sp, q, k, v, uniform, o_uniform, ws, stream)
            sparse_call(sp, q, k, v, per_head, o_chunks, ws, stream)
            torch.cuda.synchronize()
            if not torch.isfinite(o_chunks).all():
                raise SystemExit(f"non-finite output of the head-chunked call (H {H}, causal {causal})")
            equal = bool(torch.equal(o_uniform, o_chunks))
            ms_uniform = ba.time_ms(lambda _: sparse_call(sp, q, k, v, uniform, o_uniform, ws, stream), [None],
                                    reps=args.reps)
            ms_chunks = ba.time_ms(lambda _: sparse_call(sp, q, k, v, per_head, o_chunks, ws, stream), [None],
                                   reps=args.reps)
            work = 4.0 * H * D * N * N / (2 if causal else 1)
            base = dict(date=datetime.date.today().isoformat(), device=dev, commit=args.commit, workload="random",
                        dtype="bf16", head_dim=D, batch=1, heads_q=H, heads_kv=Hkv, seq_q=N, seq_k=N, causal=causal,
                        select="topk", select_value=args.topk, sim_threshold=-1.0, rel_l1=None, sparsity=None,
                        cos_sim=None)
            records.append(dict(base, impl="sparge-uniform-threshold", ms=ms_uniform, tops=work / ms_uniform / 1e9))
            records.append(dict(base, impl="sparge-per-head-head-chunks", ms=ms_chunks, tops=work / ms_chunks / 1e9,
                                head_chunks=(H + 255) // 256, equal_to_uniform=equal,
                                time_vs_uniform=ms_chunks / ms_uniform))
            for r in records[-2:]:
                print(json.dumps(r), flush=True)
    write_jsonl(record_path(args.out_dir, dev, f"head-chunks-{args.commit}"), records)
    print("| heads | causal | uniform ms | per-head (chunks) ms | chunks | time ratio | equal |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        if r["impl"] == "sparge-per-head-head-chunks":
            u = next(x for x in records if x["impl"] == "sparge-uniform-threshold" and x["heads_q"] == r["heads_q"]
                     and x["causal"] == r["causal"])
            print(f"| {r['heads_q']} | {r['causal']} | {u['ms']:.3f} | {r['ms']:.3f} | {r['head_chunks']} "
                  f"| {r['time_vs_uniform']:.3f} | {r['equal_to_uniform']} |")


if __name__ == "__main__":
    main()
