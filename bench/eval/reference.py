"""The reference attention of the evaluation report. Its error, rate and time measures are those of
every test and benchmark: sparge.measure (python/sparge/measure.py).

The reference is full attention in float64 on the cpu and float32 on cuda (TF32 off), computed
one head and one query chunk at a time so that 128K-token heads fit in memory. It takes the
inputs the measured call took (bf16-rounded on the GPU), so the error is that of the method and
its arithmetic, not of rounding the inputs.
"""
import math

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
