"""The public functions: sparse attention (both stages), Stage 1 alone, Stage 2 alone.

Every function takes q [B, Hq, Nq, D] and k, v [B, Hkv, Nk, D] (layout="HND") or the token-major
[B, N, H, D] (layout="NHD", read through strides, no copy). Hq must be a multiple of Hkv (GQA).
On cuda the GPU kernels take float16/bfloat16 and compiled head dims (CUDA_HEAD_DIMS); other head
dims are zero-padded here, with the caller's scale, and the output is sliced back.
The rules the kernels follow are in docs/method.md; the options are validated by the C++ core.
"""
import functools
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from . import _C, _options
from ._options import DEFAULTS
from .mask import BlockMask

# Head dims the CUDA kernels are compiled for (src/cuda/instances); others are padded up.
# Empty when the extension was built without CUDA. 256 (listed when the build has sm_90a code)
# runs on sm_90 only; other GPUs refuse it naming head_dim.
CUDA_HEAD_DIMS = tuple(_C.cuda_head_dims())


@dataclass
class SparseStats:
    """What a call computed. Tensors, so a compiled graph can return them without syncing.

    Stage 1's per-head stats (None from block_sparse_attention, which has no Stage 1), each
    [B, Hq] on the output's device:
      select_value: the selection's number each head used: cdf_threshold / topk, or with
        target_error the TopCdf mass it chose (1.0: the head kept every allowed tile);
      error_estimate: target_error's estimated relative L1 error of that choice (NaN when off);
      forced_tiles: allowed tiles kept because the similarity gate (sim_threshold) forced them,
        whatever the selection said; forced_fraction relates them to the dense tile count.
    """
    block_mask: BlockMask
    lse: torch.Tensor          # natural-log LSE per row [B, Hq, Nq] (-inf: row sees no key)
    pv_counters: torch.Tensor  # [Hq, 2]: (row group, tile) pairs visited, skipped by λ
    select_value: Optional[torch.Tensor] = None
    error_estimate: Optional[torch.Tensor] = None
    forced_tiles: Optional[torch.Tensor] = None

    @property
    def forced_fraction(self) -> Optional[torch.Tensor]:
        """Per (batch, head): forced tiles over the tiles dense (or causal) attention computes
        there; 1.0 means the gate overrode the selection entirely (a dense head)."""
        if self.forced_tiles is None:
            return None
        dense = int(self.block_mask.allowed_key_blocks().sum())  # the same for every head
        return self.forced_tiles.double() / max(dense, 1)

    @property
    def sparsity(self) -> float:
        """Fraction of the dense (or causal) tiles that were not computed."""
        return self.block_mask.sparsity

    @property
    def pv_skip_fraction(self) -> float:
        """Skipped over visited (row group, tile) pairs, as the kernels count them: pairs whose
        rows see no key of the tile (causality, the window) count as skipped too."""
        visited, skipped = self.pv_counters.sum(dim=0).tolist()
        return skipped / visited if visited else 0.0

    @property
    def lambda_skip_fraction(self) -> float:
        """The λ rule's own skips: pv_skip_fraction without the pairs that causality or the
        window hides from every row of the group (BlockMask.band_hidden_pairs)."""
        visited, skipped = self.pv_counters.sum(dim=0).tolist()
        hidden = int(self.block_mask.band_hidden_pairs().sum())
        return (skipped - hidden) / (visited - hidden) if visited > hidden else 0.0


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


def _padded_head_dim(x: torch.Tensor, *more: torch.Tensor) -> int:
    """The head dim the ops run at: the widest of x's and `more`'s (v's may differ from q's, as
    SDPA allows), rounded up to a compiled one on cuda."""
    head_dim = max(t.shape[-1] for t in (x, *more))
    if not x.is_cuda:
        return head_dim
    fits = [d for d in CUDA_HEAD_DIMS if d >= head_dim]
    return fits[0] if fits else head_dim  # larger ones: the C++ error names the compiled set


def _pad(padded: int, q: torch.Tensor, *others: torch.Tensor):
    """q, k, (v) with zero channels up to `padded`: zero channels change no dot product, pooled
    score or cosine similarity, and the scale is explicit, so the result is unchanged. v may
    have its own head dim (SDPA's Ev, as MLA-style models call it): padded to the same width, its
    zero channels give zero output channels, which the caller slices off (`_value_channels`)."""
    head_dim = q.shape[-1]
    if others and others[0].shape[-1] != head_dim:  # padding would hide the mismatch
        raise ValueError(f"k.head_dim must equal q.head_dim ({head_dim}), got "
                         f"{others[0].shape[-1]}")
    return tuple(t if t.shape[-1] == padded else F.pad(t, (0, padded - t.shape[-1]))
                 for t in (q, *others))


def _value_channels(out: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The output's first v.head_dim channels: the ones past it came from `_pad`'s zeros."""
    return out[..., :v.shape[-1]] if out.shape[-1] != v.shape[-1] else out


def _op_options(q, scale, kw):
    return _options.op_options(heads_q=q.shape[1], scale=scale, **kw)


def _is_empty(q, k) -> bool:
    """No output element, or no key: SDPA returns an empty tensor, or zeros (a row that sees no
    key), without checking anything else. The C++ core requires every extent >= 1."""
    return q.numel() == 0 or k.shape[2] == 0


def _empty_mask(q, k, block_q, block_k, is_causal, causal_align, window_left,
                window_right) -> BlockMask:
    num_q, num_k = -(-q.shape[2] // block_q), -(-k.shape[2] // block_k)
    counts = torch.zeros((q.shape[0], q.shape[1], num_q), dtype=torch.int32, device=q.device)
    indices = torch.zeros((*counts.shape, num_k), dtype=torch.int32, device=q.device)
    return BlockMask(counts, indices, seq_q=q.shape[2], seq_k=k.shape[2], block_q=block_q,
                     block_k=block_k, is_causal=is_causal, causal_align=causal_align,
                     window_left=window_left, window_right=window_right)


def _empty_result(q, k, layout, mask: BlockMask, return_stats):
    """The result of a call with no work (see _is_empty): zeros like q, lse -inf."""
    out = _from_hnd(torch.zeros_like(q), layout)
    if not return_stats:
        return out
    lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
    counters = torch.zeros((q.shape[1], 2), dtype=torch.int64, device=q.device)
    return out, SparseStats(mask, lse, counters)


_MASK_DTYPES = (torch.bool, torch.float32, torch.float16, torch.bfloat16)


def _attn_mask_4d(attn_mask, q: torch.Tensor, k: torch.Tensor) -> Optional[torch.Tensor]:
    """SDPA's attn_mask (any shape that broadcasts to [B, Hq, Nq, Nk], bool = may attend, float
    = added to the scores) as a 4-D view [B|1, Hq|1, Nq|1, Nk] without a copy: missing leading
    axes become 1, and a key axis of 1 is expanded (stride 0). q and k are HND."""
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got "
                        f"{type(attn_mask).__name__}")
    if attn_mask.dtype not in _MASK_DTYPES:
        raise TypeError(f"attn_mask.dtype must be bool (True = attend) or float32, float16, "
                        f"bfloat16 (added to the scores), got {attn_mask.dtype}")
    if attn_mask.device != q.device:
        raise ValueError(f"attn_mask must be on q's device ({q.device}), got {attn_mask.device}")
    full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    shape = tuple(attn_mask.shape)
    if not 1 <= len(shape) <= 4 or any(s not in (1, f) for s, f in zip(shape[::-1], full[::-1])):
        raise ValueError(f"attn_mask of shape {list(shape)} does not broadcast to [B, Hq, Nq, Nk] "
                         f"= {list(full)} (each axis 1 or its size; GQA masks use query heads)")
    mask = attn_mask.reshape((1,) * (4 - len(shape)) + shape) if len(shape) < 4 else attn_mask
    return mask.expand(*mask.shape[:3], full[3]) if mask.shape[3] != full[3] else mask


def _key_lengths(key_lengths, q: torch.Tensor, k: torch.Tensor) -> Optional[torch.Tensor]:
    """[B] int32 on q's device: keys key_lengths[b] .. Nk - 1 of batch entry b are padding."""
    if key_lengths is None:
        return None
    lengths = torch.as_tensor(key_lengths, device=q.device)
    if lengths.is_floating_point() or lengths.dtype == torch.bool or lengths.dim() != 1 or \
            lengths.numel() != q.shape[0]:
        raise ValueError(f"key_lengths must be {q.shape[0]} integers (one per batch entry), got "
                         f"{key_lengths!r}")
    return lengths.to(torch.int32).contiguous()


def _permute_mask(mask: Optional[torch.Tensor], gather_q, gather_k):
    """The mask in the Hilbert order of the call (broadcast axes stay as they are)."""
    if mask is None:
        return None
    if mask.shape[2] > 1:
        mask = mask.index_select(2, gather_q)
    return mask.index_select(3, gather_k) if mask.stride(3) != 0 else mask


def _grid_order(tokens: int, grid: Tuple[int, int, int], offset: int, device):
    """Hilbert order of the grid's T*H*W tokens, which start at `offset` of `tokens`."""
    if not (isinstance(grid, (tuple, list)) and len(grid) == 3
            and all(isinstance(g, int) and not isinstance(g, bool) for g in grid)):
        raise TypeError("token_grid must be a tuple of 3 ints (frames, height, width), "
                        f"got {grid!r}")
    count = grid[0] * grid[1] * grid[2]
    if offset < 0 or offset + count > tokens:
        raise ValueError(f"token_grid {tuple(grid)} at grid_offset {offset} needs "
                         f"{offset + count} tokens, but the sequence has {tokens}")
    return torch.ops.sparge.hilbert_order(grid[0], grid[1], grid[2], device)


def _order_and_gather(tokens: int, grid, offset: int, device):
    """The grid's Hilbert order, and the gather index over all `tokens` putting tokens
    [offset, offset + T*H*W) in that order, others staying (what an attn_mask is permuted by)."""
    order = _grid_order(tokens, grid, offset, device)
    gather = torch.cat([torch.arange(offset, device=device), order + offset,
                        torch.arange(offset + order.numel(), tokens, device=device)])
    return order, gather


# The order is built on the host (milliseconds for 128K tokens) and copied over: keep the last
# few per (tokens, grid, offset, device). The tensors are only read.
_cached_order_and_gather = functools.lru_cache(maxsize=16)(_order_and_gather)


def _hilbert_gathers(tokens: int, grid, offset: int, device):
    hashable = isinstance(grid, (tuple, list)) and isinstance(offset, int)
    if torch.compiler.is_compiling() or not hashable:  # traced, or invalid: no caching
        return _order_and_gather(tokens, grid, offset, device)
    try:
        return _cached_order_and_gather(tokens, tuple(grid), offset, torch.device(device))
    except TypeError:  # an unhashable element: the uncached path raises the named error
        return _order_and_gather(tokens, grid, offset, device)


def _check_key_blocks(key_blocks):
    from .key_blocks import KeyBlocks
    if not isinstance(key_blocks, KeyBlocks):
        raise TypeError(f"key_blocks must be a sparge.KeyBlocks, got {type(key_blocks).__name__}")


def _key_block_args(key_blocks, padded: int):
    """The ops' key-block arguments (pooled, sim, mean, tokens, block_k); Nones without. On cuda
    q and k travel with zero channels up to a compiled head dim (`_pad`), so the pooled keys and
    their mean get the same zero channels (the pooled scores and similarities are unchanged)."""
    if key_blocks is None:
        return (None, None, None, 0, 64)
    pooled, mean = key_blocks.pooled, key_blocks.mean
    extra = padded - pooled.shape[2]
    if extra > 0:  # pooled is [B, Hkv, D, blocks]: pad the channel dimension
        pooled, mean = F.pad(pooled, (0, 0, 0, extra)), F.pad(mean, (0, extra))
    return (pooled, key_blocks.sim, mean, key_blocks.tokens, key_blocks.block_k)


def _key_shape_view(key_blocks, q: torch.Tensor, layout: str) -> torch.Tensor:
    """Keys of the blocks' shape, [B, Hkv, tokens, D] in `layout`, that Stage 1 with key blocks
    does not read: one zero row of q's dtype and device broadcast along the tokens (stride 0)."""
    b, h, d, _ = key_blocks.pooled.shape
    if key_blocks.tokens < 1:
        raise ValueError("key_blocks cover no key (tokens 0): build or append them first")
    row = torch.zeros((b, h, 1, d), dtype=q.dtype, device=q.device)
    k = row.expand(b, h, key_blocks.tokens, d)
    return k.transpose(1, 2) if layout == "NHD" else k


def _check_sdpa_arguments(dropout_p, enable_gqa):
    """SDPA's dropout_p (only 0) and enable_gqa (a bool), which sparge.attention takes."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p must be 0 (Sparge has no attention dropout: it serves "
                         f"inference), got {dropout_p}")
    if not isinstance(enable_gqa, bool):
        raise TypeError(f"enable_gqa must be a bool, got {type(enable_gqa).__name__}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
              is_causal: bool = False, *, scale: Optional[float] = None, enable_gqa: bool = False,
              causal_align: str = DEFAULTS["causal_align"],
              window_left: int = DEFAULTS["window_left"],
              window_right: int = DEFAULTS["window_right"],
              layout: str = "HND", sim_threshold=DEFAULTS["sim_threshold"],
              cdf_threshold=None, topk=None, pv_threshold=DEFAULTS["pv_threshold"],
              attention_sink: bool = DEFAULTS["attention_sink"],
              estimate: str = DEFAULTS["estimate"], sample_rows: int = DEFAULTS["sample_rows"],
              token_grid: Optional[Tuple[int, int, int]] = None, grid_offset: int = 0,
              block_q: int = DEFAULTS["block_q"], block_k: int = DEFAULTS["block_k"],
              quantized: Union[bool, str] = False, backend: str = "auto", return_stats: bool = False,
              target_error: float = DEFAULTS["target_error"], key_lengths=None,
              key_blocks=None):
    """Sparse attention, both stages: predict the block mask (Stage 1), then attend (Stage 2).

    The parameters are F.scaled_dot_product_attention's as it takes them (query, key, value,
    attn_mask, dropout_p, is_causal positional; scale and enable_gqa keywords), so a call to it
    ports by the function's name alone, positional arguments included; Sparge's own options are
    keywords after them.

    Thresholds are floats or 1-D tensors with one value per query head: `sim_threshold` in
    [-1, 1], `cdf_threshold` (TopCdf) or `topk` (TopK) in (0, 1] (TopCdf with the default 0.98
    when neither is given), `pv_threshold` in [0, inf] (log2 units; inf never skips).
    `estimate` is where Stage 1's block masses come from: "pooled" (block means, SpargeAttn's
    map), "sampled_rows" (the exact softmax rows of `sample_rows` query rows per block, so
    that `cdf_threshold` is close to the true attention mass kept; docs/method.md) or "auto"
    (the default: sampled_rows where the call has a full query block, pooled at decode steps
    and with `key_blocks`; with the default sim_threshold=0.1 it serves untuned models,
    docs/method.md "The defaults").
    `target_error` (0 = off, else in (0, 1)) picks per head and per call the sparsest TopCdf mass
    whose relative L1 error, estimated from the exact outputs of sampled rows, stays within it
    (it implies estimate="sampled_rows" and replaces cdf_threshold; not with topk).
    `window_left` / `window_right` (tokens, -1 = no limit) are flash-attn's window_size: query
    row r sees key c only if r + o - window_left <= c <= r + o + window_right, o = 0
    (top_left) or Nk - Nq (bottom_right) by `causal_align`; is_causal hides every key right of
    the diagonal whatever window_right says (a causal window of W keys including the diagonal,
    as transformers' sliding_window=W, is is_causal=True, window_left=W - 1).
    `attn_mask` is SDPA's (any shape that broadcasts to [B, Hq, Nq, Nk]; bool: True = attend,
    float32/16/bf16: added to the scores); `key_lengths` (B ints) marks keys key_lengths[b] and
    after as padding without a mask tensor. Both combine with is_causal and the window; a row
    that sees no key gives zeros (as SDPA). Tiles the mask hides wholly are never computed
    (docs/method.md, "Attention masks"). On cuda key_lengths run natively, a dense attn_mask
    with head dims up to 128, exact or quantized="int8" (else NotImplementedError).
    `quantized`: False (exact), True or "int8_fp8" (INT8 Q·Kᵀ, FP8 P·V: sm_90 on cuda), or
    "int8" (INT8 Q·Kᵀ, P·V at the inputs' precision: about a third of int8_fp8's error; on cuda
    every GPU from sm_80).
    `token_grid=(T, H, W)` reorders tokens [grid_offset, grid_offset + T*H*W) along a Hilbert
    curve for the call and restores the order of the output. Returns the output in q's layout,
    or (output, SparseStats) when `return_stats`; with token_grid the stats' mask is in the
    Hilbert order. Defaults are those of sparge::SparseOptions (include/sparge/option_list.h).
    `key_blocks` (sparge.KeyBlocks covering exactly k's tokens, with this call's block_k) give
    Stage 1 the key side kept beside a KV cache, so that it reads no key (decode, chunked
    prefill; pooled estimate only; sparge/key_blocks.py).
    `dropout_p` must be 0 (Sparge has no attention dropout: inference only), and GQA (Hq a
    multiple of Hkv) is served whatever `enable_gqa` says.
    """
    _check_sdpa_arguments(dropout_p, enable_gqa)
    _check_inputs(q, k, v, layout)
    if key_blocks is not None:
        _check_key_blocks(key_blocks)
        if token_grid is not None:
            raise ValueError("key_blocks describe the keys in the cache's order: a token_grid "
                             "would reorder them; pass one or the other")
    qh, kh, vh = _to_hnd(q, layout), _to_hnd(k, layout), _to_hnd(v, layout)
    scale = _options.resolve_scale(scale, qh.shape[-1])
    options = _op_options(qh, scale, dict(
        is_causal=is_causal, causal_align=causal_align, sim_threshold=sim_threshold,
        cdf_threshold=cdf_threshold, topk=topk, pv_threshold=pv_threshold,
        attention_sink=attention_sink, block_q=block_q, block_k=block_k, quantized=quantized,
        backend=backend, estimate=estimate, sample_rows=sample_rows, window_left=window_left,
        window_right=window_right, target_error=target_error))
    mask4, lengths = _attn_mask_4d(attn_mask, qh, kh), _key_lengths(key_lengths, qh, kh)
    if _is_empty(qh, kh):
        _options.check_options(options)
        mask = _empty_mask(qh, kh, block_q, block_k, is_causal, causal_align, window_left,
                           window_right)
        return _empty_result(qh, kh, layout, mask, return_stats)
    reordered = False  # whether the output goes back to the caller's token order
    if token_grid is not None:
        if is_causal:
            raise ValueError("token_grid reorders tokens, which breaks causal order: pass "
                             "is_causal=False with a token_grid")
        if window_left >= 0 or window_right >= 0:
            raise ValueError("token_grid reorders tokens, which breaks a sliding window's "
                             "positions: pass window_left=-1 and window_right=-1 with a "
                             "token_grid")
        if lengths is not None:
            raise ValueError("token_grid reorders keys, so key_lengths no longer mark a suffix: "
                             "pass the padding as an attn_mask with a token_grid")
        # The gathers (and the output's inverse) are one strided copy each through the library's
        # permute_tokens; the full gather indices, cached with the order, serve an attn_mask only.
        order, gather_q = _hilbert_gathers(qh.shape[2], token_grid, grid_offset, qh.device)
        gather_k = _hilbert_gathers(kh.shape[2], token_grid, grid_offset, kh.device)[1]
        qh, kh, vh = (torch.ops.sparge.permute_tokens(t, order, grid_offset, False)
                      for t in (qh, kh, vh))
        mask4 = _permute_mask(mask4, gather_q, gather_k)
        reordered = True
    padded = _padded_head_dim(qh, vh)
    out, lse, counts, indices, pv_counters, stage1, forced = torch.ops.sparge.attention(
        *_pad(padded, qh, kh, vh), mask4, lengths, *_key_block_args(key_blocks, padded),
        **options,
        with_extras=return_stats)
    out = _value_channels(out, vh)
    if reordered:
        out = torch.ops.sparge.permute_tokens(out, order, grid_offset, True)
    out = _from_hnd(out, layout)
    if not return_stats:
        return out
    mask = BlockMask(counts, indices, seq_q=qh.shape[2], seq_k=kh.shape[2], block_q=block_q,
                     block_k=block_k, is_causal=is_causal, causal_align=causal_align,
                     window_left=window_left, window_right=window_right)
    return out, SparseStats(mask, lse, pv_counters, select_value=stage1[0],
                            error_estimate=stage1[1], forced_tiles=forced)


def predict_block_mask(q: torch.Tensor, k: torch.Tensor, *, is_causal: bool = False,
                       causal_align: str = DEFAULTS["causal_align"],
                       window_left: int = DEFAULTS["window_left"],
                       window_right: int = DEFAULTS["window_right"],
                       scale: Optional[float] = None, layout: str = "HND",
                       sim_threshold=DEFAULTS["sim_threshold"], cdf_threshold=None, topk=None,
                       attention_sink: bool = DEFAULTS["attention_sink"],
                       estimate: str = DEFAULTS["estimate"],
                       sample_rows: int = DEFAULTS["sample_rows"],
                       block_q: int = DEFAULTS["block_q"], block_k: int = DEFAULTS["block_k"],
                       backend: str = "auto", attn_mask: Optional[torch.Tensor] = None,
                       key_lengths=None, key_blocks=None) -> BlockMask:
    """Stage 1 alone: the BlockMask that `attention` would use with the same options (only
    blocks the causal flag and the window allow are eligible; the mask keeps the window; tiles
    that `attn_mask` / `key_lengths` hide wholly are never kept).

    With `key_blocks` (a sparge.KeyBlocks) Stage 1 takes the key side from them and reads no
    key: `k` may then be None (the keys are key_blocks.tokens long) or any tensor of the keys'
    shape. This is how a rank that holds one shard of the keys predicts its rows against all of
    them from gathered blocks (sparge.distributed's ring). Pooled estimate only."""
    if key_blocks is not None:
        _check_key_blocks(key_blocks)
        if k is None:
            k = _key_shape_view(key_blocks, q, layout)
    _check_inputs(q, k, None, layout)
    qh, kh = _to_hnd(q, layout), _to_hnd(k, layout)
    scale = _options.resolve_scale(scale, qh.shape[-1])
    options = _op_options(qh, scale, dict(
        is_causal=is_causal, causal_align=causal_align, sim_threshold=sim_threshold,
        cdf_threshold=cdf_threshold, topk=topk, pv_threshold=DEFAULTS["pv_threshold"],
        attention_sink=attention_sink, block_q=block_q, block_k=block_k, quantized=False,
        backend=backend, estimate=estimate, sample_rows=sample_rows, window_left=window_left,
        window_right=window_right))
    mask4, lengths = _attn_mask_4d(attn_mask, qh, kh), _key_lengths(key_lengths, qh, kh)
    if _is_empty(qh, kh):
        _options.check_options(options)
        return _empty_mask(qh, kh, block_q, block_k, is_causal, causal_align, window_left,
                           window_right)
    padded = _padded_head_dim(qh)
    counts, indices = torch.ops.sparge.predict_block_mask(*_pad(padded, qh, kh), mask4, lengths,
                                                          *_key_block_args(key_blocks, padded),
                                                          **options)
    return BlockMask(counts, indices, seq_q=qh.shape[2], seq_k=kh.shape[2], block_q=block_q,
                     block_k=block_k, is_causal=is_causal, causal_align=causal_align,
                     window_left=window_left, window_right=window_right)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           block_mask: BlockMask, *, scale: Optional[float] = None,
                           layout: str = "HND", pv_threshold=DEFAULTS["pv_threshold"],
                           quantized: Union[bool, str] = False, backend: str = "auto",
                           return_stats: bool = False, attn_mask: Optional[torch.Tensor] = None,
                           key_lengths=None):
    """Stage 2 alone: attention over the tiles `block_mask` keeps (its geometry, causality and
    window are the mask's), with `attn_mask` / `key_lengths` applied as in `attention`.
    Returns the output in q's layout, or (output, SparseStats)."""
    _check_inputs(q, k, v, layout)
    if not isinstance(block_mask, BlockMask):
        raise TypeError(f"block_mask must be a sparge.BlockMask, got {type(block_mask).__name__}")
    qh, kh, vh = _to_hnd(q, layout), _to_hnd(k, layout), _to_hnd(v, layout)
    scale = _options.resolve_scale(scale, qh.shape[-1])
    padded = _padded_head_dim(qh, vh)
    m = block_mask
    options = _op_options(qh, scale, dict(
        is_causal=m.is_causal, causal_align=m.causal_align,
        sim_threshold=DEFAULTS["sim_threshold"], cdf_threshold=None, topk=None,
        pv_threshold=pv_threshold, attention_sink=False, block_q=m.block_q, block_k=m.block_k,
        quantized=quantized, backend=backend, window_left=m.window_left,
        window_right=m.window_right))
    mask4, lengths = _attn_mask_4d(attn_mask, qh, kh), _key_lengths(key_lengths, qh, kh)
    if _is_empty(qh, kh):
        _options.check_options(options)
        return _empty_result(qh, kh, layout, m, return_stats)
    out, lse, pv_counters = torch.ops.sparge.block_sparse_attention(
        *_pad(padded, qh, kh, vh), m.counts, m.indices, m.row_offsets, mask4, lengths,
        **options, with_extras=return_stats)
    out = _from_hnd(_value_channels(out, vh), layout)
    return (out, SparseStats(m, lse, pv_counters)) if return_stats else out


def build_info() -> str:
    """What the compiled extension contains (backends, CUDA archs, head dims, dtypes)."""
    return _C.build_info()
