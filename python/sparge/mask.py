"""BlockMask: which (query block, key block) tiles Stage 2 computes.

Storage is the C++ layout (include/sparge/types.h): per (batch, query head, query block) row,
`counts[b, h, i]` kept key blocks listed in ascending order in `indices[b, h, i, :counts]`.
The mask remembers its geometry and causality, so density is measured against the tiles dense
(or causal) attention computes, as docs/method.md defines.
"""
from typing import Optional

import torch

from ._options import CAUSAL_ALIGNS, check_choice


def allowed_key_blocks(seq_q: int, seq_k: int, block_q: int, block_k: int, causal: bool,
                       causal_align: str = "top_left", device=None) -> torch.Tensor:
    """A_i for every query block i: key blocks [0, A_i) are causally allowed (docs/method.md)."""
    num_q = -(-seq_q // block_q)
    num_k = -(-seq_k // block_k)
    if not causal:
        return torch.full((num_q,), num_k, dtype=torch.int64, device=device)
    offset = seq_k - seq_q if causal_align == "bottom_right" else 0
    last_row = torch.clamp((torch.arange(num_q, device=device) + 1) * block_q, max=seq_q) - 1
    last_key = torch.clamp(last_row + offset, max=seq_k - 1)
    return torch.where(last_key < 0, torch.zeros_like(last_key), last_key // block_k + 1)


class BlockMask:
    """A block mask with its geometry. Build one with `sparge.predict_block_mask` or `from_dense`."""

    def __init__(self, counts: torch.Tensor, indices: torch.Tensor, *, seq_q: int, seq_k: int,
                 block_q: int = 128, block_k: int = 64, is_causal: bool = False,
                 causal_align: str = "top_left"):
        check_choice(causal_align, CAUSAL_ALIGNS, "causal_align")
        num_q, num_k = -(-seq_q // block_q), -(-seq_k // block_k)
        if counts.dim() != 3 or counts.shape[2] != num_q:
            raise ValueError(f"counts must be [batch, heads, {num_q}] for seq_q={seq_q}, "
                             f"block_q={block_q}, got {tuple(counts.shape)}")
        if tuple(indices.shape) != (*counts.shape, num_k):
            raise ValueError(f"indices must be {[*counts.shape, num_k]} for seq_k={seq_k}, "
                             f"block_k={block_k}, got {list(indices.shape)}")
        self.counts, self.indices = counts, indices
        self.seq_q, self.seq_k, self.block_q, self.block_k = seq_q, seq_k, block_q, block_k
        self.is_causal, self.causal_align = is_causal, causal_align

    @property
    def batch(self) -> int:
        return self.counts.shape[0]

    @property
    def heads(self) -> int:
        return self.counts.shape[1]

    @property
    def num_q_blocks(self) -> int:
        return self.counts.shape[2]

    @property
    def num_k_blocks(self) -> int:
        return self.indices.shape[3]

    @property
    def device(self) -> torch.device:
        return self.counts.device

    def allowed_key_blocks(self) -> torch.Tensor:
        return allowed_key_blocks(self.seq_q, self.seq_k, self.block_q, self.block_k,
                                  self.is_causal, self.causal_align, self.counts.device)

    def to_dense(self) -> torch.Tensor:
        """Bool [batch, heads, num_q_blocks, num_k_blocks], True where the tile is computed."""
        num_k = self.num_k_blocks
        listed = torch.arange(num_k, device=self.device) < self.counts.unsqueeze(-1)
        # Unlisted slots (whose index values are unused) land in an extra column, dropped after.
        target = torch.where(listed, self.indices.long(), torch.full_like(self.indices, num_k,
                                                                          dtype=torch.long))
        dense = torch.zeros((*self.counts.shape, num_k + 1), dtype=torch.bool, device=self.device)
        return dense.scatter_(-1, target, True)[..., :num_k]

    @classmethod
    def from_dense(cls, dense: torch.Tensor, *, seq_q: int, seq_k: int, block_q: int = 128,
                   block_k: int = 64, is_causal: bool = False,
                   causal_align: str = "top_left") -> "BlockMask":
        """A mask from a bool (or 0/1) tile map [batch, heads, num_q_blocks, num_k_blocks]."""
        if dense.dim() != 4:
            raise ValueError(f"dense must be 4-D [batch, heads, num_q_blocks, num_k_blocks], "
                             f"got shape {tuple(dense.shape)}")
        keep = dense.bool()
        num_k = keep.shape[-1]
        slot = torch.arange(num_k, device=keep.device)
        # Kept blocks sort first and ascending; the rest sort after them and are not listed.
        order = torch.where(keep, slot, slot + num_k).sort(dim=-1).values
        indices = torch.where(order < num_k, order, torch.zeros_like(order)).to(torch.int32)
        counts = keep.sum(dim=-1, dtype=torch.int32)
        return cls(counts.contiguous(), indices.contiguous(), seq_q=seq_q, seq_k=seq_k,
                   block_q=block_q, block_k=block_k, is_causal=is_causal,
                   causal_align=causal_align)

    def to_token_mask(self) -> torch.Tensor:
        """Bool [batch, heads, seq_q, seq_k]: True where a query may attend a key (tiles and
        causality). Memory grows with seq_q * seq_k; meant for tests and small inspections."""
        dense = self.to_dense()
        tokens = dense.repeat_interleave(self.block_q, dim=2)[:, :, :self.seq_q]
        tokens = tokens.repeat_interleave(self.block_k, dim=3)[:, :, :, :self.seq_k]
        if self.is_causal:
            offset = self.seq_k - self.seq_q if self.causal_align == "bottom_right" else 0
            rows = torch.arange(self.seq_q, device=self.device).unsqueeze(1)
            cols = torch.arange(self.seq_k, device=self.device).unsqueeze(0)
            tokens = tokens & (cols <= rows + offset)
        return tokens

    def tiles(self):
        """(kept, dense): tiles the mask computes among the allowed ones, and the allowed ones."""
        allowed = self.allowed_key_blocks()
        kept = (self.to_dense() & (torch.arange(self.num_k_blocks, device=self.device)
                                   < allowed.unsqueeze(1))).sum()
        return kept, allowed.sum() * self.batch * self.heads

    @property
    def density(self) -> float:
        """Fraction of the dense (or causal) tiles that the mask computes."""
        kept, dense = self.tiles()
        return float(kept) / float(dense) if int(dense) else 0.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density if int(self.tiles()[1]) else 0.0

    def to(self, device) -> "BlockMask":
        return BlockMask(self.counts.to(device), self.indices.to(device), seq_q=self.seq_q,
                         seq_k=self.seq_k, block_q=self.block_q, block_k=self.block_k,
                         is_causal=self.is_causal, causal_align=self.causal_align)

    def plot(self, batch: int = 0, head: int = 0, ax=None, path: Optional[str] = None):
        """Draws one head's tile map (black = computed) with matplotlib, if it is installed."""
        try:
            import matplotlib
            if ax is None and path is not None:
                matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError("BlockMask.plot needs matplotlib (pip install matplotlib)") from exc
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 5 * self.num_q_blocks / max(1, self.num_k_blocks)))
        ax.imshow(self.to_dense()[batch, head].cpu().numpy(), cmap="Greys", vmin=0, vmax=1,
                  interpolation="nearest", aspect="auto")
        ax.set_xlabel(f"key block ({self.block_k} tokens)")
        ax.set_ylabel(f"query block ({self.block_q} tokens)")
        ax.set_title(f"batch {batch}, head {head}: density {self.density:.3f}")
        if path is not None:
            ax.figure.savefig(path, dpi=100, bbox_inches="tight")
        return ax

    def __repr__(self) -> str:
        return (f"BlockMask(batch={self.batch}, heads={self.heads}, seq_q={self.seq_q}, "
                f"seq_k={self.seq_k}, blocks={self.block_q}x{self.block_k}, "
                f"is_causal={self.is_causal}, device={self.device})")
