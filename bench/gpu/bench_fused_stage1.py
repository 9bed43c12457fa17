"""The quantized sparse_attention call with Stage 1's reading of q and k fused into the
quantization pass (issue 10, "one fused pass"), against the same call split in two
(predict_block_mask, then block_sparse_attention with the quantized options: Stage 1 and the pass
each read q and k), the exact call, and dense cuDNN, in one process.

Per (N, head dim, setting): the whole call's time each way, Stage 1 alone (exact options) and the
quantized Stage 2 alone on the call's mask (pass + kernel), the sparsity, whether the fused call's
mask equals the split call's and the relative L1 between their outputs (0 when the masks agree:
the same codes, the same kernel), and the fused output's relative L1 against fp32 attention.
bf16, B 1, H 32, random Gaussian inputs (several sets, together larger than L2), CUDA events,
median after warm-up (sparge.measure.time_ms). Through libsparge_c.so (ctypes), no package install.

    python3 bench/gpu/bench_fused_stage1.py --lib build/libsparge_c.so --commit $(git rev-parse --short HEAD)
    python3 bench/gpu/bench_fused_stage1.py --lib ... --calls-only   # one call each way, for ncu
"""
import argparse
import ctypes as C
import datetime
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_attention as ba  # noqa: E402  (the ctypes wrapper, the mask struct, measure)

measure = ba.measure

# Around issue 10's sparsity 0.95 (top-k 0.05 with the gate off), a middle one, and the library's
# default options (on random inputs every block is non-similar there: nearly dense).
SETTINGS = [
    ("topk0.05_sim-1", dict(topk=0.05, sim_threshold=-1.0)),
    ("topk0.25_sim-1", dict(topk=0.25, sim_threshold=-1.0)),
    ("defaults", dict()),
]


def option_values(setting):
    """sparge_options fields by name (select 1 = top-k; the value is κ or τ)."""
    kw = {}
    if "topk" in setting:
        kw.update(select=1, select_value=setting["topk"])
    if "sim_threshold" in setting:
        kw["sim_threshold"] = setting["sim_threshold"]
    return kw


def sparse_call(sp, q, k, v, opts, o, ws, stream, mask=None):
    """sparge_sparse_attention (both stages; mask_out when given)."""
    tq, tk, tv, to = sp.tensor(q), sp.tensor(k), sp.tensor(v), sp.tensor(o)
    rc = sp.lib.sparge_sparse_attention(C.byref(tq), C.byref(tk), C.byref(tv), opts, C.byref(to), None,
                                        C.c_void_p(ws.data_ptr()), C.c_size_t(ws.numel()),
                                        C.c_void_p(stream), C.byref(mask) if mask is not None else None,
                                        sp.err, C.c_size_t(1024))
    sp.check(rc, "sparge_sparse_attention")


def dense_mask(counts, indices, nk):
    """[rows, nk] bool of the kept tiles (indices past a row's count are unspecified)."""
    idx = indices.view(-1, nk).long()
    keep = torch.arange(nk, device=idx.device)[None, :] < counts.view(-1, 1)
    dense = torch.zeros(idx.shape[0], nk + 1, dtype=torch.bool, device=idx.device)
    dense.scatter_(1, torch.where(keep, idx, nk), True)
    return dense[:, :nk]


def reference(q, k, v, causal=False):
    """fp32 attention, four heads at a time (PyTorch's memory-efficient kernel)."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        for h in range(0, q.shape[1], 4):
            out[:, h:h + 4] = F.scaled_dot_product_attention(q[:, h:h + 4].float(), k[:, h:h + 4].float(),
                                                             v[:, h:h + 4].float(), is_causal=causal)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default="build/libsparge_c.so")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--seqs", default="8192,32768")
    ap.add_argument("--head-dims", default="128,64")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--calls-only", action="store_true",
                    help="one fused and one split call at the first N and head dim, top-k 0.05 (for ncu)")
    args = ap.parse_args()

    torch.manual_seed(0)
    sp = ba.Sparge(args.lib)
    dev = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    stream = torch.cuda.current_stream().cuda_stream
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    B, H = 1, args.heads
    records = []
    slug = "".join(ch if ch.isalnum() else "-" for ch in dev).strip("-")
    path = os.path.join(args.out_dir, f"{date}_{slug}_fused-stage1-{args.commit}.jsonl")
    live = None if args.calls_only else open(path, "w")

    def emit(**kw):
        records.append(kw)
        print(json.dumps(kw), flush=True)
        if live:
            live.write(json.dumps(kw) + "\n")
            live.flush()

    for D in [int(x) for x in args.head_dims.split(",")]:
        for n in [int(x) for x in args.seqs.split(",")]:
            set_bytes = 3 * B * H * n * D * 2
            n_sets = 1 if args.calls_only else max(2, min(4, math.ceil(3 * l2 / set_bytes)))
            sets = [tuple(torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                    for _ in range(n_sets)]
            q0, k0, v0 = sets[0]
            out = torch.empty_like(q0)
            out2 = torch.empty_like(q0)
            nq, nk = math.ceil(n / ba.BLOCK_Q), math.ceil(n / ba.BLOCK_K)
            masks = []
            for _ in range(2):
                c = torch.empty(B * H * nq, device="cuda", dtype=torch.int32)
                i = torch.empty(B * H * nq * nk, device="cuda", dtype=torch.int32)
                masks.append((c, i, ba.Mask(c.data_ptr(), i.data_ptr(), 1, 0, B, H, n, n, ba.BLOCK_Q, ba.BLOCK_K)))
            base = dict(date=date, device=dev, commit=args.commit, workload="random", dtype="bf16", head_dim=D,
                        batch=B, heads_q=H, heads_kv=H, seq_q=n, seq_k=n, causal=False)
            tops = lambda ms: measure.dense_tops(base, False, ms)  # noqa: E731
            ref = None
            if not args.calls_only:
                ref = reference(q0, k0, v0)
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    ms = ba.time_ms(lambda s: F.scaled_dot_product_attention(*s), sets, reps=args.reps)
                emit(**base, impl="sdpa-cudnn", setting="dense", sparsity=0.0, ms=ms, tops=tops(ms),
                     rel_l1=None, cos_sim=None)
                cudnn_ms = ms
            for tag, setting in SETTINGS[:1] if args.calls_only else SETTINGS:
                kw = option_values(setting)
                qopts = sp.options(False, quant=1, **kw)
                eopts = sp.options(False, **kw)
                ws = torch.empty(max(sp.workspace_size(q0, k0, qopts),
                                     sp.workspace_size(q0, k0, eopts, caller_mask=False)),
                                 device="cuda", dtype=torch.uint8)
                fused = lambda s: sparse_call(sp, s[0], s[1], s[2], qopts, out, ws, stream, masks[0][2])  # noqa: E731

                def split(s):
                    sp.predict(s[0], s[1], qopts, masks[1][2], ws, stream)
                    sp.attention(s[0], s[1], s[2], masks[1][2], qopts, out2, stream, ws=ws)

                out.fill_(float("nan"))
                out2.fill_(float("nan"))
                fused(sets[0])
                split(sets[0])
                torch.cuda.synchronize()
                if args.calls_only:
                    print("calls done", flush=True)
                    return
                if not (torch.isfinite(out).all() and torch.isfinite(out2).all()):
                    raise SystemExit(f"non-finite output at N={n} D={D} {tag}")
                same_mask = bool(torch.equal(dense_mask(*masks[0][:2], nk), dense_mask(*masks[1][:2], nk)))
                fused_vs_split = measure.rel_l1(out, out2)
                err = measure.rel_l1(out, ref)
                sparsity = 1.0 - float(masks[0][0].sum()) / (B * H * nq * nk)
                ms_fused = ba.time_ms(fused, sets, reps=args.reps)
                ms_split = ba.time_ms(split, sets, reps=args.reps)
                ms_exact = ba.time_ms(lambda s: sparse_call(sp, s[0], s[1], s[2], eopts, out2, ws, stream),
                                      sets, reps=args.reps)
                ms_stage1 = ba.time_ms(lambda s: sp.predict(s[0], s[1], eopts, masks[1][2], ws, stream),
                                       sets, reps=args.reps)
                ms_stage2 = ba.time_ms(lambda s: sp.attention(s[0], s[1], s[2], masks[0][2], qopts, out2,
                                                              stream, ws=ws), sets, reps=args.reps)
                common = dict(base, setting=tag, sparsity=sparsity, cos_sim=None)
                emit(**common, impl="sparge-quant", call="fused", ms=ms_fused, tops=tops(ms_fused), rel_l1=err,
                     mask_equals_split=same_mask, rel_l1_vs_split=fused_vs_split, x_cudnn=cudnn_ms / ms_fused)
                emit(**common, impl="sparge-quant", call="split", ms=ms_split, tops=tops(ms_split), rel_l1=None,
                     x_cudnn=cudnn_ms / ms_split)
                emit(**common, impl="sparge-exact", call="one-shot", ms=ms_exact, tops=tops(ms_exact), rel_l1=None,
                     x_cudnn=cudnn_ms / ms_exact)
                emit(**common, impl="sparge-stage1", call="predict (exact options)", ms=ms_stage1, tops=None,
                     rel_l1=None)
                emit(**common, impl="sparge-quant-stage2", call="pass + kernel on the mask", ms=ms_stage2,
                     tops=None, rel_l1=None)
            del sets, out, out2, ref
            torch.cuda.empty_cache()
    if live:
        live.close()
    print("| D | N | setting | sparsity | fused ms | split ms | split/fused | exact ms | stage 1 ms | quant stage 2 ms "
          "| fused not-stage-2 | fused x cuDNN | mask = split | rel L1 fused vs split | rel L1 vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = {}
    for r in records:
        rows.setdefault((r["head_dim"], r["seq_q"], r["setting"]), {})[(r["impl"], r.get("call"))] = r
    for (D, n, tag), g in rows.items():
        f, s = g.get(("sparge-quant", "fused")), g.get(("sparge-quant", "split"))
        if not f:
            continue
        e = g[("sparge-exact", "one-shot")]
        st1 = g[("sparge-stage1", "predict (exact options)")]
        st2 = g[("sparge-quant-stage2", "pass + kernel on the mask")]
        print(f"| {D} | {n} | {tag} | {f['sparsity']:.3f} | {f['ms']:.3f} | {s['ms']:.3f} | {s['ms'] / f['ms']:.2f} "
              f"| {e['ms']:.3f} | {st1['ms']:.3f} | {st2['ms']:.3f} | {(f['ms'] - st2['ms']) / f['ms']:.0%} "
              f"| {f['x_cudnn']:.2f} | {f['mask_equals_split']} | {f['rel_l1_vs_split']:.1e} | {f['rel_l1']:.4f} |")


if __name__ == "__main__":
    main()
