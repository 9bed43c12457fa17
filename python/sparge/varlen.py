"""Packed batches of sequences of different lengths, in flash-attn's varlen convention."""
from typing import Optional, Union

import torch

from . import _options, ops
from ._options import DEFAULTS


def _packed(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must be 3-D [total_tokens, heads, head_dim] (sequences packed one "
                         f"after another), got shape {tuple(x.shape)}")
    return x.unsqueeze(0)  # [1, total, H, D]: the "NHD" view with batch 1


def _cu_seqlens(cu) -> torch.Tensor:
    """A list becomes an int32 tensor; a tensor passes as it is (the op requires int32)."""
    return cu if isinstance(cu, torch.Tensor) else torch.tensor(cu, dtype=torch.int32)


def attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q,
                     cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int, *,
                     is_causal: bool = False, causal_align: str = DEFAULTS["causal_align"],
                     window_left: int = DEFAULTS["window_left"],
                     window_right: int = DEFAULTS["window_right"], scale: Optional[float] = None,
                     sim_threshold=DEFAULTS["sim_threshold"], cdf_threshold=None, topk=None,
                     pv_threshold=DEFAULTS["pv_threshold"],
                     attention_sink: bool = DEFAULTS["attention_sink"],
                     estimate: str = DEFAULTS["estimate"], sample_rows: int = DEFAULTS["sample_rows"],
                     block_q: int = DEFAULTS["block_q"], block_k: int = DEFAULTS["block_k"],
                     quantized: Union[bool, str] = False, backend: str = "auto",
                     target_error: float = DEFAULTS["target_error"]) -> torch.Tensor:
    """Sparse attention over a packed batch, as flash-attn's flash_attn_varlen_func takes it.

    q is [total_q, Hq, D] and k, v [total_k, Hkv, D]: the sequences one after another, no
    padding. `cu_seqlens_q` / `cu_seqlens_k` (int32, num_seqs + 1 values: 0, nondecreasing,
    ending at total_q / total_k; any device, read on the host, so a sync on cuda) cut them into
    sequences; `max_seqlen_q` / `max_seqlen_k` must be at least the longest (checked, not trusted).
    Each sequence is its own problem: Stage 1, causality (`is_causal`, `causal_align`) and the
    window apply per sequence, exactly as separate sparge.attention calls would (the output is
    equal to them). A sequence without queries is skipped; one with queries and no key is an
    error. The options are sparge.attention's. Returns [total_q, Hq, D]. Today the library runs
    one call per sequence on views of the packed tensors (no copy); no LSE or stats yet.
    """
    q4, k4, v4 = _packed(q, "q"), _packed(k, "k"), _packed(v, "v")
    ops._check_inputs(q4, k4, v4, "NHD")
    qh, kh, vh = (ops._to_hnd(t, "NHD") for t in (q4, k4, v4))
    scale = _options.resolve_scale(scale, qh.shape[-1])
    options = ops._op_options(qh, scale, dict(
        is_causal=is_causal, causal_align=causal_align, sim_threshold=sim_threshold,
        cdf_threshold=cdf_threshold, topk=topk, pv_threshold=pv_threshold,
        attention_sink=attention_sink, block_q=block_q, block_k=block_k, quantized=quantized,
        backend=backend, estimate=estimate, sample_rows=sample_rows, window_left=window_left,
        window_right=window_right, target_error=target_error))
    padded = ops._padded_head_dim(qh, vh)
    out = torch.ops.sparge.attention_varlen(
        *ops._pad(padded, qh, kh, vh), _cu_seqlens(cu_seqlens_q),
        _cu_seqlens(cu_seqlens_k), int(max_seqlen_q), int(max_seqlen_k), **options)
    out = ops._value_channels(out, vh)
    return out.transpose(1, 2).squeeze(0)
