"""Which dense attention masks Sparge can serve without the mask.

Reading a dense mask costs (and on CUDA needs a switch for now), but some masks say nothing
that Sparge's options cannot: a mask that
lets every query see every key is no mask, and a mask that is exactly a band around a diagonal
is `is_causal` and/or a sliding window (`window_left`, `window_right`) with the matching
`causal_align`. Framework integrations pass such masks (Hugging Face transformers materializes
the causal one where it cannot prove it away, e.g. a prefill after a cache, and the sliding
window one on every call longer than the window), and they should not cost a fallback.
A band cut per batch entry at a key length (right padding: the [B, 1, 1, Nk] or [B, 1, Nq, Nk]
masks of a padded batch, causal or not) is the band's flags plus `key_lengths`, which every
device runs without reading a mask. Anything else (left padding, packed sequences, biases,
masks that differ between heads or, other than by a padding suffix, between batch entries, rows
that see no key) is not reducible.
"""
from typing import Dict, Optional, Tuple

import torch

# Why a mask is not reducible, for the fallback messages.
NOT_BOOL_OR_FLOAT = "an attn_mask of a dtype other than bool or floating point"
ADDITIVE_BIAS = ("an additive float attn_mask with values other than 0 and -inf (a bias such as "
                 "ALiBi or relative positions; Sparge adds no bias)")
BAD_SHAPE = "an attn_mask that does not broadcast to [batch, heads, Nq, Nk]"
EMPTY_ROWS = ("an attn_mask in which some query sees no key (SDPA returns NaN for such rows, "
              "Sparge zeros)")
NOT_A_BAND = ("an attn_mask that is not one band around a diagonal, the same in every batch "
              "entry and head (padding, packed sequences, prefix or block patterns)")
UNALIGNED_BAND = ("an attn_mask band that neither top_left nor bottom_right alignment expresses "
                  "(its right edge and left edge follow different diagonals)")


def _allowed(mask: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(the boolean "may attend" tensor of an SDPA mask, None or a 0-d device bool saying
    whether a float mask holds only 0 (attend) and -inf or its dtype's lowest value (do not)).
    (None, None) for other dtypes, which SDPA itself rejects."""
    if mask.dtype == torch.bool:
        return mask, None
    if not mask.is_floating_point():
        return None, None
    attend = mask == 0
    blocked = (mask == float("-inf")) | (mask == torch.finfo(mask.dtype).min)
    return attend, (attend | blocked).all()


def _options_for_band(lo: int, hi: int, seq_q: int, seq_k: int) -> Optional[Dict[str, object]]:
    """Sparge options whose band (mask.key_band) equals lo <= c - r <= hi on the [seq_q, seq_k]
    grid, for a band whose first and last rows see keys (so hi >= 0 and lo <= seq_k - seq_q),
    or None when no single alignment expresses both edges. Causal is preferred where
    the right edge is a causal diagonal; top_left is tried before bottom_right."""
    for align, offset in (("top_left", 0), ("bottom_right", seq_k - seq_q)):
        if hi == offset:
            causal, right = True, -1
        elif hi >= seq_k - 1:  # no row is cut on the right
            causal, right = False, -1
        elif hi > offset:
            causal, right = False, hi - offset
        else:
            continue
        if lo <= -(seq_q - 1):  # no row is cut on the left
            left = -1
        elif lo <= offset:
            left = offset - lo
        else:
            continue
        return dict(is_causal=causal, causal_align=align, window_left=left, window_right=right)
    return None


def options_for_mask(mask: torch.Tensor, seq_q: int, seq_k: int,
                     scores_shape: Optional[Tuple[int, ...]] = None
                     ) -> Tuple[Optional[Dict[str, object]], str]:
    """(options, "") with the sparge.attention keywords (is_causal, causal_align, window_left,
    window_right) under which Sparge computes what SDPA computes with `mask` (broadcast over
    [batch, heads, seq_q, seq_k]), or (None, why not). An all-true mask gives {} (no mask).
    `scores_shape`, when given, is the call's score shape, to which the mask must broadcast.

    A candidate band is read off two rows of the mask's first [seq_q, seq_k] slice (the last
    key row 0 sees, the first key the last row sees), built on the mask's device and compared
    with the whole mask: one synchronization, no copy to the host beyond three numbers. Every
    row must see a key (SDPA's fully masked rows are NaN, Sparge's zeros).
    """
    if mask.dim() > 4 or mask.dim() < 2:
        return None, BAD_SHAPE
    allowed, valid = _allowed(mask)
    if allowed is None:
        return None, NOT_BOOL_OR_FLOAT
    try:
        if scores_shape is not None and \
                torch.broadcast_shapes(mask.shape, scores_shape) != tuple(scores_shape):
            return None, BAD_SHAPE
        unexpanded = allowed
        allowed = allowed.expand(*allowed.shape[:-2], seq_q, seq_k)
    except RuntimeError:
        return None, BAD_SHAPE  # SDPA raises its own error
    if seq_q == 0 or seq_k == 0:
        return None, EMPTY_ROWS
    plane = allowed[(0,) * (allowed.dim() - 2)]
    first_row, last_row = plane[0], plane[-1]
    cols = torch.arange(seq_k, device=allowed.device)
    hi = torch.where(first_row, cols, -1).max()             # row 0's last key - 0
    lo = torch.where(last_row, cols, seq_k).min() - (seq_q - 1)  # last row's first key - row
    rows = torch.arange(seq_q, device=allowed.device)[:, None]
    band = (cols >= rows + lo) & (cols <= rows + hi)
    no_bias = valid if valid is not None else torch.ones((), dtype=torch.bool,
                                                         device=allowed.device)
    sees_keys = first_row.any() & last_row.any()
    is_band = (allowed == band).all()
    no_bias, sees_keys, is_band, lo, hi = torch.stack(
        [no_bias.long(), sees_keys.long(), is_band.long(), lo.long(), hi.long()]).tolist()
    if not no_bias:
        return None, ADDITIVE_BIAS
    lengths = None
    if not (sees_keys and is_band):
        padded = _band_with_right_padding(unexpanded.expand(*unexpanded.shape[:-1], seq_k),
                                          seq_q, seq_k)
        if padded is None:
            return None, EMPTY_ROWS if not sees_keys else NOT_A_BAND
        lo, hi, lengths = padded
    options = {} if lo <= -(seq_q - 1) and hi >= seq_k - 1 else \
        _options_for_band(lo, hi, seq_q, seq_k)
    if options is None:
        return None, UNALIGNED_BAND
    if lengths is not None:
        if lengths.numel() == 1 and scores_shape is not None and len(scores_shape) == 4:
            lengths = lengths.expand(scores_shape[0]).contiguous()  # one length, every entry
        options = dict(options, key_lengths=lengths)
    return options, ""


def _band_with_right_padding(allowed: torch.Tensor, seq_q: int, seq_k: int
                             ) -> Optional[Tuple[int, int, torch.Tensor]]:
    """(lo, hi, key_lengths) when the "may attend" tensor (broadcast to [..., seq_q, seq_k]) is
    one band, the same in every head, cut per batch entry at a key length (keys past it hidden
    for every row: right padding), with every row seeing a key; else None. key_lengths is an
    int32 [B] tensor on the mask's device (B = the mask's batch extent). One synchronization.

    Each entry's length is one past the last key any of its rows sees, and the band is read off
    the longest entry as options_for_mask reads it. A band edge that coincides with the longest
    length is taken as no edge: every key past it is padding in every entry, so both say the
    same."""
    a = allowed.reshape((-1,) + tuple(allowed.shape[-3:])) if allowed.dim() == 4 else \
        allowed.reshape((1,) + tuple(allowed.shape[-3:]) if allowed.dim() == 3 else
                        (1, 1) + tuple(allowed.shape[-2:]))
    one_head = a[:, 0]  # [B, rows, seq_k]; rows = seq_q, or 1 for a [B, 1, 1, Nk] mask
    same_heads = (a == one_head[:, None]).all()
    cols = torch.arange(seq_k, device=a.device)
    lengths = torch.where(one_head.any(dim=1), cols + 1, 0).amax(dim=-1)  # [B]
    plane = one_head[lengths.argmax()]
    first_row, last_row = plane[0], plane[-1]
    hi = torch.where(first_row, cols, -1).max()
    lo = torch.where(last_row, cols, seq_k).min() - (plane.shape[0] - 1)
    if plane.shape[0] == 1:  # the same keys for every row: no band, only the lengths
        lo, hi = torch.full_like(lo, -seq_q), torch.full_like(hi, seq_k)
    rows = torch.arange(seq_q, device=a.device)[:, None] if plane.shape[0] > 1 else \
        torch.zeros(1, 1, dtype=torch.long, device=a.device)
    band = (cols >= rows + lo) & (cols <= rows + hi)
    expected = band[None] & (cols < lengths[:, None, None])
    rows_see_keys = one_head.any(dim=-1).all()
    ok, lo, hi, longest = torch.stack([
        (same_heads & (one_head == expected).all() & rows_see_keys).long(), lo.long(),
        hi.long(), lengths.max().long()]).tolist()
    if not ok:
        return None
    if hi >= longest - 1:
        hi = seq_k
    return lo, hi, lengths.to(torch.int32)
