"""KeyBlocks: Stage 1's key side kept beside a KV cache, for decode and chunked prefill.

A decode step (a few new query rows against a long cache) spends most of Stage 1 pooling every
cached key again. KeyBlocks keep what Stage 1 computes from the keys (the smoothing mean, and
per key block its pooled row and self-similarity, float64) and extend it as keys arrive,
reading only the new keys and the last incomplete block (docs/method.md, "Decode and chunked
prefill"):

    kb = sparge.KeyBlocks.build(k_cache[:, :, :n], max_tokens=capacity)     # after prefill
    ...
    kb.append(k_cache[:, :, :n + 1])                                        # after each new key
    out = sparge.attention(q, k_cache[:, :, :n + 1], v_cache[:, :, :n + 1], key_blocks=kb,
                           is_causal=True, causal_align="bottom_right", topk=0.1)

Right after `build` the call equals the call without key blocks bit for bit; after appends the
blocks keep build's mean (rebuild to take the current one). Pooled estimate only; CPU and CUDA
tensors (on CUDA Stage 1's own kernels build, append and read them).
"""
from typing import Optional

import torch

from . import _options
from .ops import _check_tensor, _to_hnd


class KeyBlocks:
    """Tensors pooled [B, Hkv, D, max_blocks] (channel-major, as Stage 1's score kernels read
    them), sim [B, Hkv, max_blocks], mean [B, Hkv, D] (float64, on the keys' device), `block_k`,
    and `tokens`: how many leading keys of the cache they cover. Make them with
    `KeyBlocks.build`."""

    def __init__(self, batch: int, heads_kv: int, head_dim: int, max_tokens: int, *,
                 block_k: int = _options.DEFAULTS["block_k"], device="cpu"):
        for name, value in (("batch", batch), ("heads_kv", heads_kv), ("head_dim", head_dim),
                            ("max_tokens", max_tokens), ("block_k", block_k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        max_blocks = -(-max_tokens // block_k)
        f64 = dict(dtype=torch.float64, device=device)
        self.pooled = torch.zeros((batch, heads_kv, head_dim, max_blocks), **f64)
        self.sim = torch.zeros((batch, heads_kv, max_blocks), **f64)
        self.mean = torch.zeros((batch, heads_kv, head_dim), **f64)
        self.block_k = block_k
        self.tokens = 0

    @property
    def max_tokens(self) -> int:
        """The most keys these blocks can cover (whole blocks)."""
        return self.pooled.shape[3] * self.block_k

    @classmethod
    def build(cls, k: torch.Tensor, *, max_tokens: Optional[int] = None,
              block_k: int = _options.DEFAULTS["block_k"], layout: str = "HND",
              mean: Optional[torch.Tensor] = None) -> "KeyBlocks":
        """Key blocks of all of k's tokens (k: the cache's first tokens, [B, Hkv, N, D] or NHD),
        with room for `max_tokens` keys (default: N) to append later. Takes k's mean, or pools
        with `mean` ([B, Hkv, D]) when given: the mean of a longer sequence that k is a part of
        (a sequence-parallel rank pooling its shard with the all-reduced mean)."""
        kh = _hnd_keys(k, layout)
        blocks = cls(kh.shape[0], kh.shape[1], kh.shape[3], max_tokens or kh.shape[2],
                     block_k=block_k, device=kh.device)
        if mean is None:
            blocks.rebuild(kh)
            return blocks
        if not isinstance(mean, torch.Tensor) or tuple(mean.shape) != tuple(blocks.mean.shape):
            raise ValueError(f"mean must be a tensor of shape {tuple(blocks.mean.shape)} "
                             f"([B, Hkv, D]), got "
                             f"{tuple(mean.shape) if isinstance(mean, torch.Tensor) else mean!r}")
        blocks.mean.copy_(mean)
        torch.ops.sparge.update_key_blocks(kh, blocks.pooled, blocks.sim, blocks.mean,
                                           blocks.block_k, 0, True, False)
        blocks.tokens = kh.shape[2]
        return blocks

    @classmethod
    def from_tensors(cls, pooled: torch.Tensor, sim: torch.Tensor, mean: torch.Tensor, *,
                     tokens: int, block_k: int = _options.DEFAULTS["block_k"]) -> "KeyBlocks":
        """Key blocks from their arrays (pooled [B, Hkv, D, max_blocks], sim [B, Hkv,
        max_blocks], mean [B, Hkv, D], float64, one device) covering the first `tokens` keys:
        blocks assembled from parts, e.g. gathered from the ranks that pooled them. The arrays
        are used, not copied."""
        for name, t, dims in (("pooled", pooled, 4), ("sim", sim, 3), ("mean", mean, 3)):
            if not isinstance(t, torch.Tensor) or t.dim() != dims or t.dtype != torch.float64:
                raise ValueError(f"{name} must be a {dims}-D float64 tensor, got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else t!r}"
                                 f"{' ' + str(t.dtype) if isinstance(t, torch.Tensor) else ''}")
        if isinstance(block_k, bool) or not isinstance(block_k, int) or block_k < 1:
            raise ValueError(f"block_k must be an int >= 1, got {block_k!r}")
        b, h, d, blocks = pooled.shape
        if tuple(sim.shape) != (b, h, blocks) or tuple(mean.shape) != (b, h, d):
            raise ValueError(f"sim {tuple(sim.shape)} and mean {tuple(mean.shape)} must be "
                             f"{(b, h, blocks)} and {(b, h, d)} for pooled {tuple(pooled.shape)}")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not (
                0 <= tokens <= blocks * block_k):
            raise ValueError(f"tokens must be an int in [0, {blocks * block_k}] (the blocks' "
                             f"capacity), got {tokens!r}")
        kb = cls.__new__(cls)
        kb.pooled, kb.sim, kb.mean = pooled.contiguous(), sim.contiguous(), mean.contiguous()
        kb.block_k, kb.tokens = block_k, tokens
        return kb

    def rebuild(self, k: torch.Tensor, *, layout: str = "HND") -> None:
        """Fill the blocks again from all of k's tokens, taking k's current mean."""
        kh = _hnd_keys(k, layout)
        torch.ops.sparge.update_key_blocks(kh, self.pooled, self.sim, self.mean, self.block_k,
                                           self.tokens, True)
        self.tokens = kh.shape[2]

    def append(self, k: torch.Tensor, *, layout: str = "HND") -> None:
        """Extend the blocks to k's tokens after the cache grew (k: the cache's first N >=
        `tokens` keys, the first `tokens` unchanged). Reads the new keys and the last incomplete
        block only; the mean stays build's."""
        kh = _hnd_keys(k, layout)
        torch.ops.sparge.update_key_blocks(kh, self.pooled, self.sim, self.mean, self.block_k,
                                           self.tokens, False)
        self.tokens = kh.shape[2]

    def __repr__(self) -> str:
        b, h, d, _ = self.pooled.shape
        return (f"KeyBlocks(batch={b}, heads_kv={h}, head_dim={d}, tokens={self.tokens}, "
                f"max_tokens={self.max_tokens}, block_k={self.block_k}, "
                f"device={self.pooled.device})")


def _hnd_keys(k: torch.Tensor, layout: str) -> torch.Tensor:
    _options.check_choice(layout, _options.LAYOUTS, "layout")
    return _to_hnd(_check_tensor(k, "k"), layout)
