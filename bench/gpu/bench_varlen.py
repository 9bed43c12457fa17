"""Varlen on the GPU (issue 14, item 4): a packed batch of sequences of different lengths through
sparge_sparse_attention_varlen against the same sequences as separate sparge_sparse_attention
calls (outputs must be bit-equal) and against one call of the batch's total length, in one
process. Issue 14's target: the varlen call's rate (dense-equivalent TOPS, counting each
sequence's own Σ 4·H·D·n_q·n_k) ≥ 0.9× the single call's on lengths {1K, 7K, 33K, 100K}.

bf16, H 8, hd 128, top-k (sim −1: every block similar) so that 100K stays short, causal and not;
random Gaussian inputs; CUDA events, median after warm-up (sparge.measure.time_ms). Through
libsparge_c.so (ctypes), no package install.

    python3 bench/gpu/bench_varlen.py --lib build/libsparge_c.so --commit $(git rev-parse --short HEAD)
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
from jsonl_out import add_run_args  # noqa: E402

measure = ba.measure


def varlen_call(sp, q, k, v, cu_q, cu_k, opts, o, ws, stream):
    """sparge_sparse_attention_varlen on [1, H, total, D] views (cu_seqlens: host int32 arrays)."""
    tq, tk, tv, to = sp.tensor(q), sp.tensor(k), sp.tensor(v), sp.tensor(o)
    n = len(cu_q) - 1
    cq, ck = (C.c_int32 * len(cu_q))(*cu_q), (C.c_int32 * len(cu_k))(*cu_k)
    rc = sp.lib.sparge_sparse_attention_varlen(C.byref(tq), C.byref(tk), C.byref(tv), cq, ck, C.c_int64(n), opts,
                                               C.byref(to), C.c_void_p(ws.data_ptr()), C.c_size_t(ws.numel()),
                                               C.c_void_p(stream), sp.err, C.c_size_t(1024))
    sp.check(rc, "sparge_sparse_attention_varlen")


def packed(total, heads, dim):
    """A packed [total, H, D] tensor seen as the [1, H, total, D] view the C ABI takes."""
    return torch.randn(total, heads, dim, device="cuda", dtype=torch.bfloat16).unsqueeze(0).transpose(1, 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(ap)
    ap.add_argument("--lengths", default="1000,7000,33000,100000")
    ap.add_argument("--heads", type=int, default=8)
    args = ap.parse_args()

    torch.manual_seed(0)
    sp = ba.Sparge(args.lib)
    sp.lib.sparge_sparse_attention_varlen.restype = C.c_int
    dev = torch.cuda.get_device_name()
    stream = torch.cuda.current_stream().cuda_stream
    lengths = [int(x) for x in args.lengths.split(",")]
    H, D, total = args.heads, args.head_dim, sum(lengths)
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    q, k, v = packed(total, H, D), packed(total, H, D), packed(total, H, D)
    out, sep = torch.empty_like(q), torch.empty_like(q)
    base = dict(date=datetime.date.today().isoformat(), device=dev, commit=args.commit, workload="random",
                dtype="bf16", head_dim=D, batch=1, heads_q=H, heads_kv=H, lengths=lengths, cos_sim=None)
    records = []
    slug = "".join(ch if ch.isalnum() else "-" for ch in dev).strip("-")
    path = os.path.join(args.out_dir, f"{base['date']}_{slug}_varlen-{args.commit}.jsonl")

    for causal in (False, True):
        opts = sp.options(causal, select=1, select_value=args.topk, sim_threshold=-1.0)
        longest = max(lengths)
        lq = q[:, :, :longest]
        ws_bytes = max(sp.workspace_size(lq, lq, opts), sp.workspace_size(q, k, opts))
        ws = torch.empty(ws_bytes, device="cuda", dtype=torch.uint8)

        def separate(_):
            for i in range(len(lengths)):
                s, e = cu[i], cu[i + 1]
                sparse_call(sp, q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], opts, sep[:, :, s:e], ws, stream)

        out.fill_(float("nan"))
        sep.fill_(float("nan"))
        varlen_call(sp, q, k, v, cu, cu, opts, out, ws, stream)
        separate(None)
        torch.cuda.synchronize()
        equal = bool(torch.equal(out, sep))
        if not torch.isfinite(out).all():
            raise SystemExit(f"non-finite varlen output (causal={causal})")
        ms_varlen = ba.time_ms(lambda _: varlen_call(sp, q, k, v, cu, cu, opts, out, ws, stream), [None],
                               reps=args.reps)
        ms_separate = ba.time_ms(separate, [None], reps=args.reps)
        ms_single = ba.time_ms(lambda _: sparse_call(sp, q, k, v, opts, sep, ws, stream), [None], reps=args.reps)
        work_varlen = sum(4.0 * H * D * n * n for n in lengths) / (2 if causal else 1)
        work_single = 4.0 * H * D * total * total / (2 if causal else 1)
        rate_varlen, rate_single = work_varlen / ms_varlen / 1e9, work_single / ms_single / 1e9
        common = dict(base, causal=causal, seq_q=total, seq_k=total, rel_l1=None)
        for impl, ms, tops in (("sparge-varlen", ms_varlen, rate_varlen),
                               ("sparge-separate-calls", ms_separate, work_varlen / ms_separate / 1e9),
                               ("sparge-single-call", ms_single, rate_single)):
            r = dict(common, impl=impl, ms=ms, tops=tops, sparsity=None)
            if impl == "sparge-varlen":
                r.update(equal_to_separate_calls=equal, rate_vs_single_call=rate_varlen / rate_single)
            records.append(r)
            print(json.dumps(r), flush=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    print("| causal | varlen ms | separate calls ms | single call ms | varlen TOPS | single TOPS | rate ratio | equal |")
    print("|---|---|---|---|---|---|---|---|")
    for causal in (False, True):
        g = {r["impl"]: r for r in records if r["causal"] == causal}
        vr, se, si = g["sparge-varlen"], g["sparge-separate-calls"], g["sparge-single-call"]
        print(f"| {causal} | {vr['ms']:.3f} | {se['ms']:.3f} | {si['ms']:.3f} | {vr['tops']:.0f} | {si['tops']:.0f} "
              f"| {vr['rate_vs_single_call']:.2f} | {vr['equal_to_separate_calls']} |")


if __name__ == "__main__":
    main()
