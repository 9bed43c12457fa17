"""The deterministic workload generators of the C++ core (docs/workloads.md), as torch tensors.

    from sparge import workloads
    w = workloads.video_grid(heads=4, grid=(8, 16, 16), head_dim=64, seed=0)
    out = sparge.attention(w.q, w.k, w.v, token_grid=w.token_grid)

The tensors are exactly the C++ generators' output (same seed, same bits on every machine):
float32, HND contiguous, on the cpu. They are meant for tests, benchmarks and the evaluation
report (bench/eval), not for training.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from . import _C


@dataclass
class Workload:
    """q [B, Hq, N, D], k and v [B, Hkv, N, D] (float32, cpu) and how they are meant to be run."""
    name: str
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    causal: bool
    grid: Optional[Tuple[int, int, int]]  # (frames, height, width) for grid workloads

    @property
    def token_grid(self) -> Optional[Tuple[int, int, int]]:
        """What to pass as sparge.attention's token_grid (None: the tokens are no grid)."""
        return self.grid

    @property
    def shape(self) -> dict:
        return dict(batch=self.q.shape[0], heads_q=self.q.shape[1], heads_kv=self.k.shape[1],
                    seq_q=self.q.shape[2], seq_k=self.k.shape[2], head_dim=self.q.shape[3])


def _positive(**sizes):
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _seed(seed) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    return seed


def _build(kind, dims, seed) -> Workload:
    q, k, v, name, grid, causal = _C.make_workload(kind, list(dims), _seed(seed))
    grid = tuple(int(g) for g in grid)
    return Workload(name, q, k, v, bool(causal), grid if all(g > 0 for g in grid) else None)


def random_gaussian(batch: int = 1, heads_q: int = 4, heads_kv: Optional[int] = None,
                    seq_q: int = 2048, seq_k: Optional[int] = None, head_dim: int = 64,
                    seed: int = 0) -> Workload:
    """I.i.d. N(0, 1) entries: nearly uniform attention, nothing can be skipped safely."""
    heads_kv = heads_q if heads_kv is None else heads_kv
    seq_k = seq_q if seq_k is None else seq_k
    _positive(batch=batch, heads_q=heads_q, heads_kv=heads_kv, seq_q=seq_q, seq_k=seq_k,
              head_dim=head_dim)
    return _build("random", (batch, heads_q, heads_kv, seq_q, seq_k, head_dim), seed)


def video_grid(batch: int = 1, heads: int = 4, grid: Tuple[int, int, int] = (8, 16, 16),
               head_dim: int = 64, seed: int = 0) -> Workload:
    """Tokens of a (frames, height, width) grid in row-major order with smooth features: local
    attention whose blocks are self-similar in Hilbert order. Four head profiles, cycled."""
    if not (isinstance(grid, (tuple, list)) and len(grid) == 3):
        raise ValueError(f"grid must be (frames, height, width), got {grid!r}")
    frames, height, width = grid
    _positive(batch=batch, heads=heads, frames=frames, height=height, width=width,
              head_dim=head_dim)
    if head_dim < 2:
        raise ValueError(f"head_dim must be >= 2 for the video features, got {head_dim}")
    return _build("video-grid", (batch, heads, frames, height, width, head_dim), seed)


def language_like(batch: int = 1, heads_q: int = 4, heads_kv: Optional[int] = None,
                  tokens: int = 2048, head_dim: int = 64, seed: int = 0) -> Workload:
    """Causal language-model-like heads (GQA when heads_kv < heads_q): attention sinks, local
    windows of 16-256 tokens and far retrieval lookups."""
    heads_kv = heads_q if heads_kv is None else heads_kv
    _positive(batch=batch, heads_q=heads_q, heads_kv=heads_kv, tokens=tokens, head_dim=head_dim)
    if heads_q % heads_kv:
        raise ValueError(f"heads_q ({heads_q}) must be a multiple of heads_kv ({heads_kv})")
    if head_dim < 4:
        raise ValueError(f"head_dim must be >= 4 (positional and content channels), "
                         f"got {head_dim}")
    return _build("llm-like", (batch, heads_q, heads_kv, tokens, head_dim), seed)
