"""Reference attention and the error measures of the evaluation report (bench-schema.md).

The reference is full attention in float64 on the cpu and float32 on cuda (TF32 off), computed
one head and one query chunk at a time so that 128K-token heads fit in memory. It takes the
inputs the measured call took (bf16-rounded on the GPU), so the error is that of the method and
its arithmetic, not of rounding the inputs.
"""
import math
import statistics
import time

import torch

CHUNK_ELEMENTS = 1 << 28  # scores per query chunk: 1 GiB in float32


def reference_attention(q, k, v, *, causal=False, scale=None, precision=None):
    """Full attention [B, Hq, Nq, D] of q [B, Hq, Nq, D], k, v [B, Hkv, Nk, D] (GQA), causal
    top-left aligned (SDPA's is_causal). Returns `precision` (default float64 on cpu, float32
    elsewhere)."""
    if precision is None:
        precision = torch.float64 if q.device.type == "cpu" else torch.float32
    batch, heads_q, seq_q, dim = q.shape
    group, seq_k = heads_q // k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    out = torch.empty((batch, heads_q, seq_q, v.shape[-1]), dtype=precision, device=q.device)
    rows = max(1, min(seq_q, CHUNK_ELEMENTS // max(1, seq_k)))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for b in range(batch):
            for h in range(heads_q):
                kh = k[b, h // group].to(precision)
                vh = v[b, h // group].to(precision)
                for first in range(0, seq_q, rows):
                    last = min(seq_q, first + rows)
                    # Causal: row r sees keys [0, r]; the chunk needs keys [0, last).
                    keys = min(seq_k, last) if causal else seq_k
                    scores = (q[b, h, first:last].to(precision) @ kh[:keys].T) * scale
                    if causal:
                        row = torch.arange(first, last, device=q.device)[:, None]
                        col = torch.arange(keys, device=q.device)[None, :]
                        scores.masked_fill_(col > row, -math.inf)
                    out[b, h, first:last] = torch.softmax(scores, dim=-1) @ vh[:keys]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


def rel_l1(out, ref) -> float:
    """||out - ref||_1 / ||ref||_1, accumulated in float64."""
    diff = (out.double() - ref.double()).abs().sum()
    return float(diff / ref.double().abs().sum())


def cos_sim(out, ref) -> float:
    """Cosine similarity of the flattened tensors, in float64."""
    a, b = out.double().flatten(), ref.double().flatten()
    return float((a @ b) / (a.norm() * b.norm()))


def errors(out, ref) -> dict:
    return dict(rel_l1=rel_l1(out, ref), cos_sim=cos_sim(out, ref))


def dense_tops(shape: dict, causal: bool, ms: float) -> float:
    """Effective rate in 10^12/s: 4·B·Hq·Nq·Nk·D / time, halved when causal (bench-schema.md)."""
    work = 4 * shape["batch"] * shape["heads_q"] * shape["seq_q"] * shape["seq_k"] \
        * shape["head_dim"]
    return work / (2 if causal else 1) / (ms * 1e-3) / 1e12


def time_ms(fn, *, warmup=2, reps=5) -> float:
    """Median time of fn() in ms: CUDA events after warm-up on cuda, wall clock on the cpu."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    events = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)
