"""BlockMask: which (query block, key block) tiles Stage 2 computes.

Storage is the C++ layout (include/sparge/types.h): per (batch, query head, query block) row,
`counts[b, h, i]` kept key blocks listed in ascending order, in one of two forms:
- padded: `indices[b, h, i, :counts]`, indices [B, H, nq, nk] (memory grows with nq * nk);
- compact (`row_offsets` set, CSR as FlashInfer's block-sparse format): row r = (b * H + h) * nq
  + i owns `indices[row_offsets[r]:row_offsets[r + 1]]` of a 1-D indices and lists its counts
  from the first (memory grows with the kept tiles). The CPU backends take it; the CUDA backend
  rejects it for now.
The mask remembers its geometry, causality and sliding window, so density is measured against
the tiles dense (or causal, or windowed) attention computes, as docs/method.md defines.
"""
from typing import Optional, Tuple

import torch

from ._options import CAUSAL_ALIGNS, check_choice


def key_band(seq_q: int, seq_k: int, causal: bool, causal_align: str = "top_left",
             window_left: int = -1, window_right: int = -1) -> Tuple[int, int]:
    """(lo, hi): query row r may see key c iff lo <= c - r <= hi (and 0 <= c < seq_k), the band
    of src/common/geometry.h. The offset is 0 (top_left) or seq_k - seq_q (bottom_right);
    hi = offset when causal, offset + window_right when window_right >= 0, else unbounded;
    lo = offset - window_left when window_left >= 0, else unbounded. Unbounded sides are
    returned as values no difference reaches (|c - r| < seq_q + seq_k)."""
    offset = seq_k - seq_q if causal_align == "bottom_right" else 0
    no_limit = seq_q + seq_k
    lo = offset - window_left if window_left >= 0 else -no_limit
    hi = offset if causal else (offset + window_right if window_right >= 0 else no_limit)
    return lo, hi


def allowed_key_range(seq_q: int, seq_k: int, block_q: int, block_k: int, causal: bool,
                      causal_align: str = "top_left", device=None, *, window_left: int = -1,
                      window_right: int = -1) -> Tuple[torch.Tensor, torch.Tensor]:
    """(begin, end), int64 [num_q_blocks]: query block i may see key blocks [begin_i, end_i)
    and no other (a block is allowed when one of its pairs is visible under the causal flag and
    the window; docs/method.md). Empty ranges are (0, 0). The block's first row sees the
    leftmost keys and its last row the rightmost, and every key between is seen by some row."""
    num_q = -(-seq_q // block_q)
    lo, hi = key_band(seq_q, seq_k, causal, causal_align, window_left, window_right)
    first_row = torch.arange(num_q, device=device) * block_q
    last_row = torch.clamp(first_row + block_q, max=seq_q) - 1
    first_key = torch.clamp(first_row + lo, min=0)
    last_key = torch.clamp(last_row + hi, max=seq_k - 1)
    empty = (last_key < 0) | (first_key > last_key)
    zero = torch.zeros_like(first_key)
    begin = torch.where(empty, zero, first_key // block_k)
    end = torch.where(empty, zero, last_key // block_k + 1)
    return begin, end


def allowed_key_blocks(seq_q: int, seq_k: int, block_q: int, block_k: int, causal: bool,
                       causal_align: str = "top_left", device=None, *, window_left: int = -1,
                       window_right: int = -1) -> torch.Tensor:
    """A_i for every query block i: how many key blocks it may see (docs/method.md). Without a
    window left these are blocks [0, A_i); with one, `allowed_key_range` says where they lie."""
    begin, end = allowed_key_range(seq_q, seq_k, block_q, block_k, causal, causal_align, device,
                                   window_left=window_left, window_right=window_right)
    return end - begin


class BlockMask:
    """A block mask with its geometry. Build one with `sparge.predict_block_mask`, `from_dense`
    or `from_csr`; `to_compact` / `to_padded` convert between the two storage forms."""

    def __init__(self, counts: torch.Tensor, indices: torch.Tensor, *, seq_q: int, seq_k: int,
                 block_q: int = 128, block_k: int = 64, is_causal: bool = False,
                 causal_align: str = "top_left", window_left: int = -1, window_right: int = -1,
                 row_offsets: Optional[torch.Tensor] = None):
        check_choice(causal_align, CAUSAL_ALIGNS, "causal_align")
        for name, value in (("window_left", window_left), ("window_right", window_right)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < -1:
                raise ValueError(f"{name} must be >= 0, or -1 for no limit, got {value}")
        num_q, num_k = -(-seq_q // block_q), -(-seq_k // block_k)
        if counts.dim() != 3 or counts.shape[2] != num_q:
            raise ValueError(f"counts must be [batch, heads, {num_q}] for seq_q={seq_q}, "
                             f"block_q={block_q}, got {tuple(counts.shape)}")
        if row_offsets is None and tuple(indices.shape) != (*counts.shape, num_k):
            raise ValueError(f"indices must be {[*counts.shape, num_k]} for seq_k={seq_k}, "
                             f"block_k={block_k}, got {list(indices.shape)}")
        if row_offsets is not None:
            rows = counts.numel()
            if row_offsets.dtype != torch.int64 or tuple(row_offsets.shape) != (rows + 1,):
                raise ValueError(f"row_offsets must be int64 [{rows + 1}] (one per mask row, "
                                 f"then the end), got {row_offsets.dtype} "
                                 f"{list(row_offsets.shape)}")
            if indices.dim() != 1:
                raise ValueError(f"indices of a compact mask must be 1-D, got shape "
                                 f"{list(indices.shape)}")
        self.counts, self.indices, self.row_offsets = counts, indices, row_offsets
        self.seq_q, self.seq_k, self.block_q, self.block_k = seq_q, seq_k, block_q, block_k
        self.is_causal, self.causal_align = is_causal, causal_align
        self.window_left, self.window_right = window_left, window_right

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
        return -(-self.seq_k // self.block_k)

    @property
    def is_compact(self) -> bool:
        """True when the indices are stored per row contiguously (`row_offsets`)."""
        return self.row_offsets is not None

    def _like(self, counts, indices, row_offsets=None) -> "BlockMask":
        return BlockMask(counts, indices, seq_q=self.seq_q, seq_k=self.seq_k,
                         block_q=self.block_q, block_k=self.block_k, is_causal=self.is_causal,
                         causal_align=self.causal_align, window_left=self.window_left,
                         window_right=self.window_right, row_offsets=row_offsets)

    def _slot_rows(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Compact form: for each slot of `indices`, its row and whether the row lists it."""
        owned = self.row_offsets.diff()
        row = torch.repeat_interleave(torch.arange(owned.numel(), device=self.device), owned)
        position = torch.arange(self.indices.numel(), device=self.device) - self.row_offsets[row]
        return row, position < self.counts.reshape(-1)[row].long()

    def to_compact(self) -> "BlockMask":
        """The same tiles, each row owning exactly its kept blocks (a copy when compact)."""
        if self.is_compact:
            row, listed = self._slot_rows()
            indices = self.indices[listed]
        else:
            listed = torch.arange(self.num_k_blocks, device=self.device) < self.counts.unsqueeze(-1)
            indices = self.indices[listed]  # row-major: each row's blocks stay ascending
        offsets = torch.zeros(self.counts.numel() + 1, dtype=torch.int64, device=self.device)
        offsets[1:] = self.counts.reshape(-1).long().cumsum(0)
        return self._like(self.counts.clone(), indices.contiguous(), offsets)

    def to_padded(self) -> "BlockMask":
        """The same tiles in the padded form, indices [B, H, nq, nk] (a copy when padded)."""
        if not self.is_compact:
            return self._like(self.counts.clone(), self.indices.clone())
        return self.from_dense(self.to_dense(), seq_q=self.seq_q, seq_k=self.seq_k,
                               block_q=self.block_q, block_k=self.block_k,
                               is_causal=self.is_causal, causal_align=self.causal_align,
                               window_left=self.window_left, window_right=self.window_right)

    @classmethod
    def from_csr(cls, indptr: torch.Tensor, indices: torch.Tensor, *, batch: int, heads: int,
                 seq_q: int, seq_k: int, block_q: int = 128, block_k: int = 64,
                 is_causal: bool = False, causal_align: str = "top_left",
                 window_left: int = -1, window_right: int = -1) -> "BlockMask":
        """A compact mask from CSR arrays (FlashInfer's block-sparse indptr + indices): row
        r = (b * heads + h) * num_q_blocks + i keeps key blocks indices[indptr[r]:indptr[r+1]],
        ascending. The arrays are converted to int64 / int32 and kept."""
        num_q = -(-seq_q // block_q)
        rows = batch * heads * num_q
        if indptr.dim() != 1 or indptr.numel() != rows + 1:
            raise ValueError(f"indptr must be 1-D with batch * heads * num_q_blocks + 1 = "
                             f"{rows + 1} entries, got shape {list(indptr.shape)}")
        offsets = indptr.to(torch.int64).contiguous()
        counts = offsets.diff().to(torch.int32).reshape(batch, heads, num_q).contiguous()
        return cls(counts, indices.to(torch.int32).contiguous(), seq_q=seq_q, seq_k=seq_k,
                   block_q=block_q, block_k=block_k, is_causal=is_causal,
                   causal_align=causal_align, window_left=window_left,
                   window_right=window_right, row_offsets=offsets)

    @property
    def device(self) -> torch.device:
        return self.counts.device

    def _geometry(self):
        return dict(window_left=self.window_left, window_right=self.window_right)

    def allowed_key_range(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(begin, end) per query block: the key blocks causality and the window allow."""
        return allowed_key_range(self.seq_q, self.seq_k, self.block_q, self.block_k,
                                 self.is_causal, self.causal_align, self.counts.device,
                                 **self._geometry())

    def allowed_key_blocks(self) -> torch.Tensor:
        """How many key blocks each query block may see (allowed_key_range's end - begin)."""
        begin, end = self.allowed_key_range()
        return end - begin

    def band_hidden_pairs(self, group_rows: int = 16) -> torch.Tensor:
        """Per query head, int64 [heads]: the (row group, kept tile) pairs whose rows see no key
        of the tile (the causal diagonal or the window hides it from all of them, or the rows or
        keys are past the sequence). Stage 2 counts these among its λ-skipped pairs (they add
        nothing either way); subtracting them leaves what the λ rule skipped
        (SparseStats.lambda_skip_fraction). Groups of `group_rows` rows start at each query
        block's first row (docs/method.md)."""
        if self.is_compact:
            return self.to_padded().band_hidden_pairs(group_rows)
        lo, hi = key_band(self.seq_q, self.seq_k, self.is_causal, self.causal_align,
                          self.window_left, self.window_right)
        dev = self.device
        groups = -(-self.block_q // group_rows)
        i = torch.arange(self.num_q_blocks, device=dev)[:, None]
        g = torch.arange(groups, device=dev)[None, :]
        r0 = i * self.block_q + g * group_rows                          # [nq, groups]
        r1 = torch.minimum(torch.minimum(r0 + group_rows, (i + 1) * self.block_q),
                           torch.full_like(r0, self.seq_q)) - 1
        exists = r0 <= r1                                               # rows past seq_q do not
        listed = torch.arange(self.num_k_blocks, device=dev) < self.counts.unsqueeze(-1)
        c0 = self.indices.long() * self.block_k                         # [B, H, nq, nk]
        c1 = torch.clamp(c0 + self.block_k, max=self.seq_k) - 1
        # The group's rows together see keys [r0 + lo, r1 + hi] (the band moves one key per row).
        first = (r0 + lo)[None, None, :, None, :]
        last = (r1 + hi)[None, None, :, None, :]
        hidden = (last < c0[..., None]) | (first > c1[..., None])
        hidden = hidden & exists[None, None, :, None, :] & listed[..., None]
        return hidden.sum(dim=(0, 2, 3, 4))

    def to_dense(self) -> torch.Tensor:
        """Bool [batch, heads, num_q_blocks, num_k_blocks], True where the tile is computed."""
        num_k = self.num_k_blocks
        if self.is_compact:
            row, listed = self._slot_rows()
            kept = self.indices[listed].long()
            if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= num_k):
                raise ValueError(f"indices of a compact mask must be key blocks in "
                                 f"[0, {num_k}), got {int(kept.min())}..{int(kept.max())}")
            dense = torch.zeros((self.counts.numel(), num_k), dtype=torch.bool,
                                device=self.device)
            dense[row[listed], kept] = True
            return dense.reshape(*self.counts.shape, num_k)
        listed = torch.arange(num_k, device=self.device) < self.counts.unsqueeze(-1)
        # Unlisted slots (whose index values are unused) land in an extra column, dropped after.
        target = torch.where(listed, self.indices.long(), torch.full_like(self.indices, num_k,
                                                                          dtype=torch.long))
        dense = torch.zeros((*self.counts.shape, num_k + 1), dtype=torch.bool, device=self.device)
        return dense.scatter_(-1, target, True)[..., :num_k]

    @classmethod
    def from_dense(cls, dense: torch.Tensor, *, seq_q: int, seq_k: int, block_q: int = 128,
                   block_k: int = 64, is_causal: bool = False, causal_align: str = "top_left",
                   window_left: int = -1, window_right: int = -1) -> "BlockMask":
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
                   causal_align=causal_align, window_left=window_left,
                   window_right=window_right)

    def to_token_mask(self) -> torch.Tensor:
        """Bool [batch, heads, seq_q, seq_k]: True where a query may attend a key (tiles,
        causality and window). Memory grows with seq_q * seq_k; meant for tests and small
        inspections."""
        dense = self.to_dense()
        tokens = dense.repeat_interleave(self.block_q, dim=2)[:, :, :self.seq_q]
        tokens = tokens.repeat_interleave(self.block_k, dim=3)[:, :, :, :self.seq_k]
        lo, hi = key_band(self.seq_q, self.seq_k, self.is_causal, self.causal_align,
                          self.window_left, self.window_right)
        rows = torch.arange(self.seq_q, device=self.device).unsqueeze(1)
        cols = torch.arange(self.seq_k, device=self.device).unsqueeze(0)
        return tokens & (cols >= rows + lo) & (cols <= rows + hi)

    def tiles(self):
        """(kept, dense): tiles the mask computes among the allowed ones, and the allowed ones."""
        begin, end = self.allowed_key_range()
        slot = torch.arange(self.num_k_blocks, device=self.device)
        allowed = (slot >= begin.unsqueeze(1)) & (slot < end.unsqueeze(1))
        kept = (self.to_dense() & allowed).sum()
        return kept, (end - begin).sum() * self.batch * self.heads

    @property
    def density(self) -> float:
        """Fraction of the allowed tiles (dense, causal or windowed) that the mask computes."""
        kept, dense = self.tiles()
        return float(kept) / float(dense) if int(dense) else 0.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density if int(self.tiles()[1]) else 0.0

    def to(self, device) -> "BlockMask":
        """The same mask (either form) on `device`."""
        offsets = None if self.row_offsets is None else self.row_offsets.to(device)
        return self._like(self.counts.to(device), self.indices.to(device), offsets)

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
                f"is_causal={self.is_causal}, window=({self.window_left}, "
                f"{self.window_right}), {'compact' if self.is_compact else 'padded'}, "
                f"device={self.device})")
