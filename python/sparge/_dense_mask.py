"""Which dense attention masks Sparge can serve without the mask.

Sparge takes no dense masks, but some masks say nothing that its flags cannot: a mask that lets
every query see every key is no mask, and a mask that is exactly the causal pattern is
`is_causal=True` with the matching alignment. Framework integrations pass such masks (Hugging
Face transformers materializes one where it cannot prove it away, e.g. a prefill after a cache),
and they should not cost a fallback. Anything else (padding, windows, packed sequences, biases)
is not reducible.
"""
from typing import Optional, Tuple

import torch


def _allowed(mask: torch.Tensor) -> Optional[torch.Tensor]:
    """The boolean "may attend" tensor of an SDPA mask, or None when the mask is more than that:
    a float mask must hold only 0 (attend) and -inf or its dtype's lowest value (do not)."""
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        return None  # SDPA itself rejects it
    attend = mask == 0
    blocked = (mask == float("-inf")) | (mask == torch.finfo(mask.dtype).min)
    if not bool((attend | blocked).all()):
        return None  # an additive bias (ALiBi, relative positions, ...)
    return attend


def flags_for_mask(mask: torch.Tensor, seq_q: int, seq_k: int) -> Optional[Tuple[bool, str]]:
    """(is_causal, causal_align) under which Sparge computes what SDPA computes with `mask`
    (broadcast over [batch, heads, seq_q, seq_k]), or None when no flags do.

    All-true is (False, "top_left"). The causal patterns are SDPA's `is_causal` ("top_left":
    key j for query i when j <= i) and FlashAttention's ("bottom_right": j <= i + seq_k - seq_q),
    the latter only when seq_k >= seq_q, where no query row is empty. Reading the mask
    synchronizes with its device; call it only where a mask is actually given.
    """
    if mask.dim() > 4 or mask.dim() < 2:
        return None
    allowed = _allowed(mask)
    if allowed is None:
        return None
    try:
        allowed = allowed.expand(*allowed.shape[:-2], seq_q, seq_k)
    except RuntimeError:
        return None  # does not broadcast to the scores: SDPA raises its own error
    if bool(allowed.all()):
        return False, "top_left"
    rows = torch.arange(seq_q, device=allowed.device)[:, None]
    cols = torch.arange(seq_k, device=allowed.device)[None, :]
    if bool((allowed == (cols <= rows)).all()):
        return True, "top_left"
    if seq_k >= seq_q and bool((allowed == (cols <= rows + (seq_k - seq_q))).all()):
        return True, "bottom_right"
    return None
