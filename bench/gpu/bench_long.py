"""Long sequences on one GPU (issue 14, item 3): sparge.attention at 128K, 256K and 1M tokens
(B 1, H 8, hd 128, bf16), with the bytes a call allocates beyond Q, K and V and the accuracy of
sampled rows against float32.

Per length and causality: the call's median time (CUDA events after a warm-up), its sparsity
(from a second call with return_stats=True, which also returns the mask), the peak bytes the
caching allocator held during the plain call beyond q, k, v (output and workspace, mask and
Stage-1 scratch included: torch.cuda.max_memory_allocated; `workspace_bytes` is that minus the
output, issue 14's "mask + Stage-1 workspace"), and the relative L1 error of --rows query rows per
head (spread over the sequence) against float32 attention of those rows over every key (the
sparse call's error, selection included), and the same for nothing skipped (top-k 1.0) where
--dense-max allows. cuDNN SDPA is timed up to --sdpa-max tokens in the same process.
Inputs: random Gaussian, or language-like heads with --workload llm (causal). One JSON line per case
(docs/bench-schema.md, with seq_q / seq_k and bytes_beyond_qkv), a table on stderr.

    python3 bench/gpu/bench_long.py --commit $(git rev-parse --short HEAD) --out long.jsonl
    python3 bench/gpu/bench_long.py --device cpu --tokens 4096 --rows 8    # smoke test
"""
import argparse
import datetime
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jsonl_out  # noqa: E402  (bench/gpu/jsonl_out.py)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import sparge  # noqa: E402


def sample_rows(n, count, device):
    """`count` query rows spread over [0, n) (first and last included)."""
    return torch.linspace(0, n - 1, steps=min(count, n), device=device).round().long().unique()


def rows_reference(q, k, v, rows, causal):
    """float32 attention of q[:, :, rows] over every key: [B, H, len(rows), D]."""
    qs = q[:, :, rows].float()
    out = []
    for h in range(q.shape[1]):  # one head at a time: [rows, N] scores stay small
        kh = k[:, h // (q.shape[1] // k.shape[1])].float()
        vh = v[:, h // (q.shape[1] // k.shape[1])].float()
        s = qs[:, h] @ kh.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if causal:
            keys = torch.arange(k.shape[2], device=q.device)
            s = s.masked_fill(keys[None, None, :] > rows[None, :, None], float("-inf"))
        out.append(torch.softmax(s, dim=-1) @ vh)
    return torch.stack(out, dim=1)


def rel_l1(a, b):
    return float((a.double() - b.double()).abs().sum() / b.double().abs().sum())


def timed(fn, device, reps):
    return sparge.measure.time_ms(fn, warmup=1, reps=reps, device=device)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tokens", type=int, nargs="+", default=[131072, 262144, 1048576])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--topk", type=float, default=0.1)
    ap.add_argument("--workload", default="random", choices=["random", "llm"])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dense-max", type=int, default=262144)
    ap.add_argument("--sdpa-max", type=int, default=262144)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = args.device
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    H, D = args.heads, args.head_dim
    records = []
    for n in args.tokens:
        if args.workload == "llm":
            w = sparge.workloads.language_like(heads_q=H, heads_kv=H, tokens=n, head_dim=D)
            q, k, v = (t.to(dev, dtype) for t in (w.q, w.k, w.v))
            causal_cases = (True,)
        else:
            gen = torch.Generator(device="cpu").manual_seed(n)
            q, k, v = (torch.randn((1, H, n, D), generator=gen).to(dev, dtype) for _ in range(3))
            causal_cases = (False, True)
        rows = sample_rows(n, args.rows, dev)
        qkv_bytes = 3 * q.numel() * q.element_size()
        for causal in causal_cases:
            settings = [("sparge-exact", dict(topk=args.topk, sim_threshold=-1.0))]
            if n <= args.dense_max:
                settings.append(("sparge-exact-dense", dict(topk=1.0, sim_threshold=-1.0)))
            ref = rows_reference(q, k, v, rows, causal)
            for impl, opts in settings:
                if dev == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                out = sparge.attention(q, k, v, is_causal=causal, **opts)
                beyond = (torch.cuda.max_memory_allocated() - base) if dev == "cuda" else None
                workspace = None if beyond is None else beyond - out.numel() * out.element_size()
                err = rel_l1(out[:, :, rows].float(), ref)
                del out
                _, stats = sparge.attention(q, k, v, is_causal=causal, return_stats=True, **opts)
                sparsity = stats.sparsity
                del stats
                ms = timed(lambda: sparge.attention(q, k, v, is_causal=causal, **opts), dev,
                           args.reps)
                # Where the call's time goes: Stage 1 alone (predict_block_mask, same options)
                # and Stage 2 alone on that mask (block_sparse_attention).
                mask = sparge.predict_block_mask(q, k, is_causal=causal, **opts)
                stage1_ms = timed(lambda: sparge.predict_block_mask(q, k, is_causal=causal,
                                                                    **opts), dev, args.reps)
                kernel_ms = timed(lambda: sparge.block_sparse_attention(q, k, v, mask), dev,
                                  args.reps)
                del mask
                records.append(dict(impl=impl, causal=causal, ms=ms, sparsity=sparsity,
                                    rel_l1=err, bytes_beyond_qkv=beyond,
                                    workspace_bytes=workspace, seq_q=n, seq_k=n,
                                    stage1_ms=stage1_ms, kernel_ms=kernel_ms))
            if dev == "cuda" and n <= args.sdpa_max:
                with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
                    ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                               dev, args.reps)
                records.append(dict(impl="sdpa-cudnn", causal=causal, ms=ms, sparsity=0.0,
                                    rel_l1=None, bytes_beyond_qkv=None, workspace_bytes=None,
                                    seq_q=n, seq_k=n, stage1_ms=None, kernel_ms=None))
            for r in records:
                r.setdefault("qkv_bytes", qkv_bytes)
        del q, k, v
        if dev == "cuda":
            torch.cuda.empty_cache()
    base = dict(date=datetime.date.today().isoformat(), device=name, commit=args.commit,
                workload=args.workload, dtype="bf16" if dev == "cuda" else "fp32",
                head_dim=D, batch=1, heads_q=H, heads_kv=H, topk=args.topk,
                sampled_rows=args.rows, cos_sim=None)
    out = []
    for r in records:
        work = 4 * H * r["seq_q"] * r["seq_k"] * D / (2 if r["causal"] else 1)
        out.append(dict(base, tops=work / r["ms"] / 1e9, **r))
    jsonl_out.emit(out, args.out)
    print(f"{'impl':>18} {'N':>8} {'causal':>6} {'ms':>10} {'TOPS':>7} {'sparsity':>8} "
          f"{'rel_l1':>9} {'stage1 ms':>9} {'kernel ms':>9} {'beyond QKV':>14} "
          f"{'workspace':>14}", file=sys.stderr)

    def share(r, key):
        if r[key] is None:
            return "-"
        return f"{r[key] / 2**20:.0f} MiB ({r[key] / r['qkv_bytes']:.1%})"

    def opt_ms(r, key):
        return "-" if r[key] is None else f"{r[key]:.2f}"
    for r in out:
        err = "-" if r["rel_l1"] is None else f"{r['rel_l1']:.2e}"
        print(f"{r['impl']:>18} {r['seq_q']:>8} {str(r['causal']):>6} {r['ms']:10.2f} "
              f"{r['tops']:7.1f} {r['sparsity']:8.3f} {err:>9} {opt_ms(r, 'stage1_ms'):>9} "
              f"{opt_ms(r, 'kernel_ms'):>9} {share(r, 'bytes_beyond_qkv'):>14} "
              f"{share(r, 'workspace_bytes'):>14}", file=sys.stderr)


if __name__ == "__main__":
    main()
