"""The public functions: sparse attention (both stages), Stage 1 alone, Stage 2 alone.

Every function takes q [B, Hq, Nq, D] and k, v [B, Hkv, Nk, D] (layout="HND") or the token-major
[B, N, H, D] (layout="NHD", read through strides, no copy). Hq must be a multiple of Hkv (GQA).
On cuda the GPU kernels take float16/bfloat16 and compiled head dims (CUDA_HEAD_DIMS); other head
dims are zero-padded here, with the caller's scale, and the output is sliced back.
The rules the kernels follow are in docs/method.md; the options are validated by the C++ core.
"""
import functools
import re
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import _options
from .mask import BlockMask



def _compiled_head_dims():
    """Head dims of the compiled CUDA attention instances ("d64 bf16, ..." in build_info)."""
    from . import _C
    dims = sorted({int(d) for d in re.findall(r"\bd(\d+) (?:bf16|fp16)", _C.build_info())})
    return tuple(dims) or (64, 128)


# Head dims the CUDA kernels are compiled for (src/cuda/instances); others are padded up.
CUDA_HEAD_DIMS = _compiled_head_dims()


@dataclass
class SparseStats:
    """What a call computed. Tensors, so a compiled graph can return them without syncing."""
    block_mask: BlockMask
    lse: torch.Tensor          # natural-log LSE per row [B, Hq, Nq] (-inf: row sees no key)
    pv_counters: torch.Tensor  # [Hq, 2]: (row group, tile) pairs visited, skipped by λ

    @property
    def sparsity(self) -> float:
        """Fraction of the dense (or causal) tiles that were not computed."""
        return self.block_mask.sparsity

    @property
    def pv_skip_fraction(self) -> float:
        visited, skipped = self.pv_counters.sum(dim=0).tolist()
        return skipped / visited if visited else 0.0


def _check_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D ([B, H, N, D] for layout='HND', [B, N, H, D] for "
                         f"'NHD'), got shape {tuple(x.shape)}")
    return x


def _to_hnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The logical [B, H, N, D] view; copies only when the channels are not contiguous."""
    x = x.transpose(1, 2) if layout == "NHD" else x
    return x if x.stride(-1) == 1 else x.contiguous()


def _from_hnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.transpose(1, 2) if layout == "NHD" else x


def _check_inputs(q, k, v, layout):
    _options.check_choice(layout, _options.LAYOUTS, "layout")
    tensors = [_check_tensor(t, n) for t, n in ((q, "q"), (k, "k"), (v, "v")) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError("sparge is inference-only (no backward): q, k or v requires grad; "
                           "call it under torch.no_grad() or torch.inference_mode()")
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        if t is not None and t.is_cuda and t.dtype == torch.float32:
            raise TypeError(f"{name}.dtype float32 on cuda is not supported by the GPU kernels "
                            "(float16, bfloat16); cast q, k and v with .to(torch.bfloat16)")


def _padded_head_dim(x: torch.Tensor) -> int:
    head_dim = x.shape[-1]
    if not x.is_cuda:
        return head_dim
    fits = [d for d in CUDA_HEAD_DIMS if d >= head_dim]
    return fits[0] if fits else head_dim  # larger ones: the C++ error names the compiled set


def _pad(padded: int, q: torch.Tensor, *others: torch.Tensor):
    """q, k, (v) with zero channels up to `padded`: zero channels change no dot product, pooled
    score or cosine similarity, and the scale is explicit, so the result is unchanged."""
    head_dim = q.shape[-1]
    if padded == head_dim:
        return (q, *others)
    for t, name in zip(others, ("k", "v")):
        if t.shape[-1] != head_dim:  # checked here because padding would hide the mismatch
            raise ValueError(f"k.head_dim and v.head_dim must equal q.head_dim ({head_dim}), "
                             f"got {name}.head_dim {t.shape[-1]}")
    return tuple(F.pad(t, (0, padded - head_dim)) for t in (q, *others))


def _pack(q, scale, with_extras, kw):
    return _options.pack(heads_q=q.shape[1], scale=scale, with_extras=with_extras, **kw)


def _token_permutation(tokens: int, grid: Tuple[int, int, int], offset: int, device):
    """Gather index putting tokens [offset, offset + T*H*W) in Hilbert order (others stay)."""
    if not (isinstance(grid, (tuple, list)) and len(grid) == 3
            and all(isinstance(g, int) and not isinstance(g, bool) for g in grid)):
        raise TypeError("token_grid must be a tuple of 3 ints (frames, height, width), "
                        f"got {grid!r}")
    count = grid[0] * grid[1] * grid[2]
    if offset < 0 or offset + count > tokens:
        raise ValueError(f"token_grid {tuple(grid)} at grid_offset {offset} needs "
                         f"{offset + count} tokens, but the sequence has {tokens}")
    order = torch.ops.sparge.hilbert_order(grid[0], grid[1], grid[2], device)
    return torch.cat([torch.arange(offset, device=device), order + offset,
                      torch.arange(offset + count, tokens, device=device)])


def _gather_and_inverse(tokens: int, grid, offset: int, device):
    gather = _token_permutation(tokens, grid, offset, device)
    inverse = torch.empty_like(gather).scatter_(
        0, gather, torch.arange(gather.numel(), device=gather.device))
    return gather, inverse


# The order is built on the host (milliseconds for 128K tokens) and copied over: keep the last
# few per (tokens, grid, offset, device). The tensors are only read (index_select).
_cached_gather_and_inverse = functools.lru_cache(maxsize=16)(_gather_and_inverse)


def _hilbert_gathers(tokens: int, grid, offset: int, device):
    hashable = isinstance(grid, (tuple, list)) and isinstance(offset, int)
    if torch.compiler.is_compiling() or not hashable:  # traced, or invalid: no caching
        return _gather_and_inverse(tokens, grid, offset, device)
    try:
        return _cached_gather_and_inverse(tokens, tuple(grid), offset, torch.device(device))
    except TypeError:  # an unhashable element: the uncached path raises the named error
        return _gather_and_inverse(tokens, grid, offset, device)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, is_causal: bool = False,
              causal_align: str = "top_left", scale: Optional[float] = None,
              layout: str = "HND", sim_threshold=_options.DEFAULT_SIM_THRESHOLD,
              cdf_threshold=None, topk=None, pv_threshold=_options.DEFAULT_PV_THRESHOLD,
              attention_sink: bool = False, token_grid: Optional[Tuple[int, int, int]] = None,
              grid_offset: int = 0, block_q: int = _options.DEFAULT_BLOCK_Q,
              block_k: int = _options.DEFAULT_BLOCK_K, quantized: bool = False,
              backend: str = "auto", return_stats: bool = False):
    """Sparse attention, both stages: predict the block mask (Stage 1), then attend (Stage 2).

    Thresholds are floats or 1-D tensors with one value per query head: `sim_threshold` in
    [-1, 1], `cdf_threshold` or `topk` in (0, 1] (TopCdf with 0.98 when neither is given),
    `pv_threshold` in [0, inf] (log2 units; inf never skips). `token_grid=(T, H, W)` reorders
    tokens [grid_offset, grid_offset + T*H*W) along a Hilbert curve for the call and restores the
    order of the output. Returns the output in q's layout, or (output, SparseStats) when
    `return_stats`; with token_grid the stats' mask is in the Hilbert order.
    """
    _check_inputs(q, k, v, layout)
    qh, kh, vh = _to_hnd(q, layout), _to_hnd(k, layout), _to_hnd(v, layout)
    scale = _options.resolve_scale(scale, qh.shape[-1])
    inverse = None
    if token_grid is not None:
        if is_causal:
            raise ValueError("token_grid reorders tokens, which breaks causal order: pass "
                             "is_causal=False with a token_grid")
        gather_q, inverse = _hilbert_gathers(qh.shape[2], token_grid, grid_offset, qh.device)
        gather_k = _hilbert_gathers(kh.shape[2], token_grid, grid_offset, kh.device)[0]
        qh, kh, vh = qh.index_select(2, gather_q), kh.index_select(2, gather_k), \
            vh.index_select(2, gather_k)
    head_dim = qh.shape[-1]
    padded = _padded_head_dim(qh)
    packed = _pack(qh, scale, return_stats, dict(
        is_causal=is_causal, causal_align=causal_align, sim_threshold=sim_threshold,
        cdf_threshold=cdf_threshold, topk=topk, pv_threshold=pv_threshold,
        attention_sink=attention_sink, block_q=block_q, block_k=block_k, quantized=quantized,
        backend=backend))
    out, lse, counts, indices, pv_counters = torch.ops.sparge.attention(
        *_pad(padded, qh, kh, vh), packed.scalars, packed.flags, packed.per_head)
    if padded != head_dim:
        out = out[..., :head_dim]
    if inverse is not None:
        out = out.index_select(2, inverse)
    out = _from_hnd(out, layout)
    if not return_stats:
        return out
    mask = BlockMask(counts, indices, seq_q=qh.shape[2], seq_k=kh.shape[2], block_q=block_q,
                     block_k=block_k, is_causal=is_causal, causal_align=causal_align)
    return out, SparseStats(mask, lse, pv_counters)


def predict_block_mask(q: torch.Tensor, k: torch.Tensor, *, is_causal: bool = False,
                       causal_align: str = "top_left", scale: Optional[float] = None,
                       layout: str = "HND", sim_threshold=_options.DEFAULT_SIM_THRESHOLD,
                       cdf_threshold=None, topk=None, attention_sink: bool = False,
                       block_q: int = _options.DEFAULT_BLOCK_Q,
                       block_k: int = _options.DEFAULT_BLOCK_K,
                       backend: str = "auto") -> BlockMask:
    """Stage 1 alone: the BlockMask that `attention` would use with the same options."""
    _check_inputs(q, k, None, layout)
    qh, kh = _to_hnd(q, layout), _to_hnd(k, layout)
    scale = _options.resolve_scale(scale, qh.shape[-1])
    padded = _padded_head_dim(qh)
    packed = _pack(qh, scale, False, dict(
        is_causal=is_causal, causal_align=causal_align, sim_threshold=sim_threshold,
        cdf_threshold=cdf_threshold, topk=topk, pv_threshold=_options.DEFAULT_PV_THRESHOLD,
        attention_sink=attention_sink, block_q=block_q, block_k=block_k, quantized=False,
        backend=backend))
    counts, indices = torch.ops.sparge.predict_block_mask(
        *_pad(padded, qh, kh), packed.scalars, packed.flags, packed.per_head)
    return BlockMask(counts, indices, seq_q=qh.shape[2], seq_k=kh.shape[2], block_q=block_q,
                     block_k=block_k, is_causal=is_causal, causal_align=causal_align)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           block_mask: BlockMask, *, scale: Optional[float] = None,
                           layout: str = "HND", pv_threshold=_options.DEFAULT_PV_THRESHOLD,
                           quantized: bool = False, backend: str = "auto",
                           return_stats: bool = False):
    """Stage 2 alone: attention over the tiles `block_mask` keeps (its geometry and causality
    are the mask's). Returns the output in q's layout, or (output, SparseStats)."""
    _check_inputs(q, k, v, layout)
    if not isinstance(block_mask, BlockMask):
        raise TypeError(f"block_mask must be a sparge.BlockMask, got {type(block_mask).__name__}")
    qh, kh, vh = _to_hnd(q, layout), _to_hnd(k, layout), _to_hnd(v, layout)
    scale = _options.resolve_scale(scale, qh.shape[-1])
    head_dim, padded = qh.shape[-1], _padded_head_dim(qh)
    m = block_mask
    packed = _pack(qh, scale, return_stats, dict(
        is_causal=m.is_causal, causal_align=m.causal_align,
        sim_threshold=_options.DEFAULT_SIM_THRESHOLD, cdf_threshold=None, topk=None,
        pv_threshold=pv_threshold, attention_sink=False, block_q=m.block_q, block_k=m.block_k,
        quantized=quantized, backend=backend))
    out, lse, pv_counters = torch.ops.sparge.block_sparse_attention(
        *_pad(padded, qh, kh, vh), m.counts, m.indices, packed.scalars, packed.flags,
        packed.per_head)
    out = _from_hnd(out[..., :head_dim] if padded != head_dim else out, layout)
    return (out, SparseStats(m, lse, pv_counters)) if return_stats else out


def build_info() -> str:
    """What the compiled extension contains (backends, CUDA archs, head dims, dtypes)."""
    from . import _C
    return _C.build_info()
