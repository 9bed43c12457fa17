"""What a selection mode was asked for against what it did: the true attention mass of every tile,
the share of it a block mask keeps, and the relative L1 error of each head's output.

TopCdf's τ with estimate="sampled_rows" should mean "the fraction of the attention mass kept", and
target_error=ε "each head's relative L1 ≤ ε" (docs/method.md, "The sampled_rows estimate" and
"The error target"). These measures check both on real inputs; the evaluation report
(bench/eval/selection.py) and the CPU studies (calibration_study.py, error_target_study.py)
share them.

The true mass of key block j for query block i is m_ij = the mean over the valid rows r of block i
of Σ_{c ∈ block j} softmax_c(scale · q_r · k_c) (causal: top-left aligned, c ≤ r, as SDPA's
is_causal). A mask keeps Σ_{j kept} m_ij of query block i's mass; averaged over the query blocks
(each 128 rows, so a row average but for a partial last block) it is the kept mass of a head.
"""
import math
from typing import List

import torch

from sparge.measure import error_sums

CHUNK_ELEMENTS = 1 << 26  # scores per query chunk (256 MiB in float32, 512 MiB in float64)


def block_mass(q, k, *, causal: bool, block_q: int = 128, block_k: int = 64, scale=None,
               precision=None) -> torch.Tensor:
    """m [B, Hq, nq, nk] of q [B, Hq, Nq, D] and k [B, Hkv, Nk, D] (GQA): each query block's mean
    row-softmax mass per key block, in `precision` (default float64 on the cpu, float32
    elsewhere, as the report's reference). Computed a chunk of query blocks at a time, so a
    128K-token head needs nq·nk numbers, not Nq·Nk."""
    if precision is None:
        precision = torch.float64 if q.device.type == "cpu" else torch.float32
    batch, heads_q, seq_q, dim = q.shape
    group, seq_k = heads_q // k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    nq, nk = -(-seq_q // block_q), -(-seq_k // block_k)
    pad_k = nk * block_k - seq_k
    blocks = max(1, CHUNK_ELEMENTS // max(1, block_q * seq_k))  # query blocks per chunk
    out = torch.empty((batch, heads_q, nq, nk), dtype=precision, device=q.device)
    for b in range(batch):
        for h in range(heads_q):
            kh = k[b, h // group].to(precision)
            for first in range(0, nq, blocks):
                last = min(nq, first + blocks)
                r0, r1 = first * block_q, min(seq_q, last * block_q)
                scores = (q[b, h, r0:r1].to(precision) @ kh.T) * scale
                if causal:
                    row = torch.arange(r0, r1, device=q.device)[:, None]
                    col = torch.arange(seq_k, device=q.device)[None, :]
                    scores.masked_fill_(col > row, -math.inf)
                # A row that sees no key (none here: causal rows see key 0) holds no mass.
                p = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
                p = torch.nn.functional.pad(p, (0, pad_k, 0, last * block_q - r1))
                per_row = p.view(last - first, block_q, nk, block_k).sum(-1)
                rows = torch.full((last - first, 1), float(block_q), dtype=precision,
                                  device=q.device)
                rows[-1] = r1 - (last - 1) * block_q  # the partial last block's valid rows
                out[b, h, first:last] = per_row.sum(1) / rows
    return out


def kept_mass(mass: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[B, Hq] mean over the query blocks of the true mass the kept tiles hold; mass from
    block_mass, keep a [B, Hq, nq, nk] bool tile mask (BlockMask.to_dense()) of the same
    token order."""
    if keep.shape != mass.shape:
        raise ValueError(f"mask {tuple(keep.shape)} and mass {tuple(mass.shape)} differ: "
                         "were they made with the same block sizes?")
    return (mass * keep.to(mass.dtype)).sum(-1).mean(-1)


def head_rel_l1(out: torch.Tensor, ref: torch.Tensor) -> List[float]:
    """The relative L1 (sparge.measure's definition) of each head's output, [B·Hq] flattened
    in (batch, head) order, of out and ref [B, Hq, N, D]."""
    return [error_sums(out[b, h], ref[b, h]).rel_l1 for b in range(out.shape[0])
            for h in range(out.shape[1])]
