"""Sparse decode on one GPU (issue 14, item 5): one new query row per sequence against a long KV
cache, through block_sparse_attention on Stage 1's mask, with the split-KV decode kernels
(SPARGE_CUDA_DECODE=1), with the tensor-core kernel (=0) and as the dispatch chooses (unset:
split-KV for at most 64 (batch, query head) rows), beside dense SDPA (cuDNN, flash).

Issue 14's target: q_len 1, KV 128K, B 8, 32 query heads over 8 KV heads, hd 128, sparsity 0.9
(top-k 0.1, gate off): the bytes a step reads (the kept key blocks' K and V rows, per query head)
reach >= 60% of the HBM copy bandwidth measured in the same process (a device-to-device copy of
1 GiB); with nothing skipped (top-k 1) the output matches SDPA. Per case: the median time (CUDA
events after a warm-up), GB/s of the kept K/V bytes, the fraction of the copy bandwidth, rel L1
against SDPA (the dense case) or against float32 attention on the same mask's keys (sparse).
`of_copy_bw` counts each query head's kept K/V bytes (shared KV heads counted once per query
head); `union_of_copy_bw` counts, per KV head, the blocks some query head of its group keeps: the
bytes the step has to read at least, the target's measure.
At the sparse setting also whole decode steps (both stages, `sparge.attention`), with and
without key blocks kept beside the cache (`sparge-step`, `sparge-step-keyblocks`): what a
serving loop pays per step. One JSON line per case (docs/bench-schema.md), a table on stderr.

    python3 bench/gpu/bench_decode.py --commit $(git rev-parse --short HEAD) --out decode.jsonl
    python3 bench/gpu/bench_decode.py --device cpu --keys 4096 --batch 1    # smoke test
"""
import argparse
import datetime
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jsonl_out  # noqa: E402  (bench/gpu/jsonl_out.py)

import torch
import torch.nn.functional as F

import sparge


def copy_bandwidth(device, reps):
    """Bytes per second of a device-to-device copy (read + write), 1 GiB."""
    x = torch.empty(1 << 29, dtype=torch.float16, device=device)
    y = torch.empty_like(x)
    ms = sparge.measure.time_ms(lambda: y.copy_(x), warmup=2, reps=reps, device=device)
    return 2 * x.numel() * x.element_size() / (ms * 1e-3)


def kept_bytes(mask, seq_k, head_dim, elem):
    """K and V bytes of the kept key blocks (each query head reads its own)."""
    counts = mask.counts.long()
    keys = counts.sum().item() * mask.block_k
    return 2 * min(keys, counts.numel() * seq_k) * head_dim * elem


def union_bytes(mask, heads_kv, head_dim, elem):
    """K and V bytes of the key blocks some query head of each KV-head group keeps: what the
    group has to read from HBM at least (the query heads of a group share the KV head)."""
    dense = mask.to_dense().bool()  # [B, H, nq, nk]
    b, h, nq, nk = dense.shape
    union = dense.view(b, heads_kv, h // heads_kv, nq, nk).any(dim=2)
    return 2 * int(union.sum().item()) * mask.block_k * head_dim * elem


def rel_l1(a, b):
    return float((a.double() - b.double()).abs().sum() / b.double().abs().sum())


def whole_steps(q, k, v, topk, base, *, stage2_out, nbytes, ubytes, sparsity, bw, dev, reps):
    """A decode step with both stages: sparge.attention pooling the cache's keys again
    ("sparge-step"), and with key blocks kept beside the cache ("sparge-step-keyblocks", built
    once with room for 1024 more keys, as a cache that grows: their rows are longer than the
    mask's). Each row's `max_abs_diff` is against Stage 2's output on Stage 1's mask (the default
    dispatch), which both should equal: the same mask, the same kernel."""
    kb = sparge.KeyBlocks.build(k, max_tokens=k.shape[2] + 1024)
    rows = []
    for impl, extra in (("sparge-step", {}), ("sparge-step-keyblocks", {"key_blocks": kb})):
        def call():
            return sparge.attention(q, k, v, topk=topk, pv_threshold=float("inf"), **extra, **base)
        out = call()
        ms = sparge.measure.time_ms(call, warmup=2, reps=reps, device=dev)
        rows.append(dict(impl=impl, topk=topk, seq_k=k.shape[2], ms=ms, sparsity=sparsity,
                         gbps=nbytes / (ms * 1e-3) / 1e9, kept_bytes=nbytes,
                         of_copy_bw=(nbytes / (ms * 1e-3)) / bw if bw else None,
                         union_bytes=ubytes,
                         union_of_copy_bw=(ubytes / (ms * 1e-3)) / bw if bw else None,
                         rel_l1=None,
                         max_abs_diff=float((out.float() - stage2_out.float()).abs().max())))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--heads-kv", type=int, default=8)
    ap.add_argument("--keys", type=int, nargs="+", default=[131072])
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--topk", type=float, default=0.1)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = args.device
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    bw = copy_bandwidth(dev, args.reps) if dev == "cuda" else None
    B, H, Hkv, D, R = args.batch, args.heads, args.heads_kv, args.head_dim, args.rows
    records = []
    for n in args.keys:
        gen = torch.Generator(device="cpu").manual_seed(n)
        q = torch.randn((B, H, R, D), generator=gen).to(dev, dtype)
        k, v = (torch.randn((B, Hkv, n, D), generator=gen).to(dev, dtype) for _ in range(2))
        base = dict(is_causal=True, causal_align="bottom_right", sim_threshold=-1.0)
        for topk in (args.topk, 1.0):
            mask = sparge.predict_block_mask(q, k, topk=topk, **base)
            nbytes = kept_bytes(mask, n, D, q.element_size())
            ubytes = min(union_bytes(mask, Hkv, D, q.element_size()),
                         2 * B * Hkv * n * D * q.element_size())
            reference = None
            if topk == 1.0 and R == 1:  # nothing skipped: SDPA is the reference (one row, at the end)
                reference = F.scaled_dot_product_attention(
                    q.float(), k.float().repeat_interleave(H // Hkv, 1),
                    v.float().repeat_interleave(H // Hkv, 1))  # one row at the end sees all keys
            # Forced on / off, and the dispatch's own choice (split-KV for few (batch, head) rows).
            for impl, switch in (("sparge-exact-decode", "1"), ("sparge-exact", "0"),
                                 ("sparge-exact-default", None)):
                if dev == "cpu" and switch != "0":
                    continue  # the CPU backends have one path
                if switch is None:
                    os.environ.pop("SPARGE_CUDA_DECODE", None)
                else:
                    os.environ["SPARGE_CUDA_DECODE"] = switch

                def call():
                    return sparge.block_sparse_attention(q, k, v, mask, pv_threshold=float("inf"))
                out = call()
                ms = sparge.measure.time_ms(call, warmup=2, reps=args.reps, device=dev)
                err = rel_l1(out.float(), reference) if reference is not None else None
                records.append(dict(impl=impl, topk=topk, seq_k=n, ms=ms, sparsity=mask.sparsity,
                                    gbps=nbytes / (ms * 1e-3) / 1e9, kept_bytes=nbytes,
                                    of_copy_bw=(nbytes / (ms * 1e-3)) / bw if bw else None,
                                    union_bytes=ubytes,
                                    union_of_copy_bw=(ubytes / (ms * 1e-3)) / bw if bw else None,
                                    rel_l1=err))
            os.environ.pop("SPARGE_CUDA_DECODE", None)
            if topk != 1.0:
                records += whole_steps(q, k, v, topk, base, stage2_out=out, nbytes=nbytes,
                                       ubytes=ubytes, sparsity=mask.sparsity, bw=bw, dev=dev,
                                       reps=args.reps)
        if dev == "cuda":
            kk, vv = (t.repeat_interleave(H // Hkv, 1) for t in (k, v))
            for impl, backend in (("sdpa-cudnn", torch.nn.attention.SDPBackend.CUDNN_ATTENTION),
                                  ("sdpa-flash", torch.nn.attention.SDPBackend.FLASH_ATTENTION)):
                try:
                    with torch.nn.attention.sdpa_kernel(backend):
                        ms = sparge.measure.time_ms(
                            lambda: F.scaled_dot_product_attention(q, kk, vv), warmup=2,
                            reps=args.reps, device=dev)
                except RuntimeError as e:  # a backend that does not take the shape
                    print(f"{impl}: {e}", file=sys.stderr)
                    continue
                nbytes = 2 * B * H * n * D * q.element_size()
                ubytes = 2 * B * Hkv * n * D * q.element_size()
                records.append(dict(impl=impl, topk=1.0, seq_k=n, ms=ms, sparsity=0.0,
                                    gbps=nbytes / (ms * 1e-3) / 1e9, kept_bytes=nbytes,
                                    of_copy_bw=(nbytes / (ms * 1e-3)) / bw, union_bytes=ubytes,
                                    union_of_copy_bw=(ubytes / (ms * 1e-3)) / bw, rel_l1=None))
    head = dict(date=datetime.date.today().isoformat(), device=name, commit=args.commit,
                workload="random", dtype="bf16" if dev == "cuda" else "fp32", head_dim=D,
                batch=B, heads_q=H, heads_kv=Hkv, seq_q=R, causal=True, cos_sim=None,
                copy_gbps=bw / 1e9 if bw else None)
    out = []
    for r in records:
        work = 4 * B * H * R * r["seq_k"] * D / 2
        out.append(dict(head, tops=work / r["ms"] / 1e9, **r))
    jsonl_out.emit(out, args.out)
    print(f"copy bandwidth: {bw / 1e9:.0f} GB/s" if bw else "copy bandwidth: -", file=sys.stderr)
    print(f"{'impl':>20} {'keys':>7} {'topk':>5} {'ms':>8} {'GB/s':>7} {'of copy':>7} "
          f"{'union':>7} {'rel_l1':>9}", file=sys.stderr)
    for r in out:
        frac = "-" if r["of_copy_bw"] is None else f"{r['of_copy_bw']:.2f}"
        ufrac = "-" if r["union_of_copy_bw"] is None else f"{r['union_of_copy_bw']:.2f}"
        err = "-" if r["rel_l1"] is None else f"{r['rel_l1']:.2e}"
        print(f"{r['impl']:>20} {r['seq_k']:>7} {r['topk']:>5} {r['ms']:8.3f} {r['gbps']:7.0f} "
              f"{frac:>7} {ufrac:>7} {err:>9}", file=sys.stderr)


if __name__ == "__main__":
    main()
