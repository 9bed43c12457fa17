"""Naive block masks at a requested sparsity, so the value of Sparge's prediction is visible:

- window: for every query block, the key blocks nearest to it (non-causal: centred on the query
  block's position; causal: the most recent allowed ones, plus key block 0 — the sinks, as
  StreamingLLM keeps them);
- random: the same number of key blocks per query block, drawn uniformly among the allowed ones
  (seeded on the cpu, so every machine draws the same mask).

Both keep exactly the same number of tiles per query block. The counts split the requested
budget round((1 - s) · Σ A_i) over the rows in proportion to A_i (largest remainder, at least one
block per row that has any), so the mask's sparsity is the requested one up to one tile (less
sparse only where the one-block minimum needs more than the budget).
"""
import torch

import sparge


def keep_counts(allowed: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Key blocks to keep per query block, given the allowed counts A_i [nq] (int64)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    allowed = allowed.to(torch.int64).cpu()
    share = (1.0 - sparsity) * allowed.double()
    counts = torch.floor(share).to(torch.int64)
    counts = torch.where(allowed > 0, counts.clamp(min=1), counts)
    budget = int(round(float(share.sum())))
    spare = budget - int(counts.sum())
    if spare > 0:
        remainder = torch.where(counts < allowed, share - counts.double(),
                                torch.full_like(share, -1.0))
        order = torch.sort(remainder, descending=True, stable=True).indices
        eligible = order[remainder[order] >= 0][:spare]
        counts[eligible] += 1
    return counts


def _geometry(seq_q, seq_k, causal, block_q, block_k):
    allowed = sparge.allowed_key_blocks(seq_q, seq_k, block_q, block_k, causal)
    return allowed, allowed.shape[0], -(-seq_k // block_k)


def window_mask(batch, heads, seq_q, seq_k, sparsity, *, causal=False, block_q=128, block_k=64,
                sink=None, device="cpu") -> sparge.BlockMask:
    """A local-window BlockMask at `sparsity` (sink defaults to `causal`)."""
    sink = causal if sink is None else sink
    allowed, num_q, num_k = _geometry(seq_q, seq_k, causal, block_q, block_k)
    counts = keep_counts(allowed, sparsity)
    j = torch.arange(num_k)[None, :]
    if causal:
        # The last K allowed blocks; with sinks, block 0 and the last K - 1.
        recent = counts - (counts >= 2).to(torch.int64) if sink else counts
        keep = (j >= (allowed - recent)[:, None]) & (j < allowed[:, None])
        if sink:
            keep |= (j == 0) & (counts >= 2)[:, None]
    else:
        # Centre of each query block, in key positions, then a window of K blocks around it.
        first = torch.arange(num_q) * block_q
        last = torch.clamp(first + block_q, max=seq_q) - 1
        centre = ((first + last).double() / 2 * seq_k / seq_q).floor().to(torch.int64)
        low = torch.clamp(centre // block_k - (counts - 1) // 2, min=0)
        low = torch.minimum(low, allowed - counts)
        keep = (j >= low[:, None]) & (j < (low + counts)[:, None])
    dense = keep.expand(batch, heads, num_q, num_k)
    return sparge.BlockMask.from_dense(dense.to(device), seq_q=seq_q, seq_k=seq_k,
                                       block_q=block_q, block_k=block_k, is_causal=causal)


def random_mask(batch, heads, seq_q, seq_k, sparsity, *, causal=False, block_q=128, block_k=64,
                seed=0, device="cpu") -> sparge.BlockMask:
    """Uniformly random kept blocks, as many per query block as the window keeps."""
    allowed, num_q, num_k = _geometry(seq_q, seq_k, causal, block_q, block_k)
    counts = keep_counts(allowed, sparsity)
    gen = torch.Generator().manual_seed(seed)
    draw = torch.rand((batch, heads, num_q, num_k), generator=gen).to(device)
    is_allowed = (torch.arange(num_k)[None, :] < allowed[:, None]).to(device)
    draw = torch.where(is_allowed, draw, torch.full_like(draw, 2.0))  # never drawn
    rank = draw.argsort(dim=-1).argsort(dim=-1)
    dense = rank < counts[:, None].to(device)
    return sparge.BlockMask.from_dense(dense, seq_q=seq_q, seq_k=seq_k,
                                       block_q=block_q, block_k=block_k, is_causal=causal)
