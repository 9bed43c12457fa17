"""A drop-in for F.scaled_dot_product_attention, and a context manager that routes a model's
SDPA calls to Sparge:

    with sparge.patch_sdpa(cdf_threshold=0.95, pv_threshold=20.0):
        out = model(x)

Calls Sparge cannot serve exactly (dropout, short sequences, gradients, dtypes/devices the
kernels lack, an attn_mask on cuda other than all-true, causal or a sliding window, possibly cut
by right padding) go to PyTorch's own SDPA, with one warning per reason. A mask that is exactly a
band (causal and/or a sliding window, either alignment) runs Sparge with the matching is_causal /
window_left / window_right, and with key_lengths when right padding cuts it per batch entry; on
cpu any other bool or float attn_mask (left padding, packed sequences, prefix or block masks,
biases) runs Sparge with the mask itself (sparge.attention's attn_mask).
Models that call `torch.nn.functional.scaled_dot_product_attention` at run time are patched;
code that imported the function under another name before the patch keeps PyTorch's.
`nn.MultiheadAttention` is served when it is called with need_weights=False: the patch turns
off PyTorch's fused fast path (which would bypass SDPA) for its duration, and warns once when a
call asks for the attention weights, which Sparge cannot return.
"""
import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from . import _options, ops
from ._dense_mask import options_for_mask
from ._module_stack import ModuleStack


class SpargeFallbackWarning(UserWarning):
    """A call was sent to PyTorch's SDPA because Sparge does not support it."""


@dataclass
class CallInfo:
    """One attention call as a patch (or a framework integration) saw it, handed to the `on_call`
    hook: who served it, its shape, and for Sparge's calls the tile sparsity and the time.

    `impl` is "sparge" or "sdpa" (PyTorch served it: `reason` says why). `ms` is the call's
    time in milliseconds (Sparge's calls; CUDA events around the call, then a synchronization,
    on cuda; the wall clock on cpu), `sparsity` the fraction of dense (or causal) tiles skipped,
    `stats` the call's sparge.SparseStats; all three None for PyTorch's calls."""
    impl: str
    reason: Optional[str]
    batch: int
    heads_q: int
    heads_kv: int
    seq_q: int
    seq_k: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    is_causal: bool
    ms: Optional[float] = None
    sparsity: Optional[float] = None
    stats: Optional["ops.SparseStats"] = None

    @classmethod
    def of(cls, impl: str, reason: Optional[str], query, key, is_causal: bool,
           layout: str = "HND", **measured) -> "CallInfo":
        hnd = layout == "HND"
        token_axis, head_axis = (-2, -3) if hnd else (-3, -2)
        heads = (lambda t: t.shape[head_axis] if t.dim() == 4 else 1)
        return cls(impl, reason, query.shape[0], heads(query), heads(key),
                   query.shape[token_axis], key.shape[token_axis], query.shape[-1], query.dtype,
                   query.device, bool(is_causal), **measured)


# Below this many key tokens (two key blocks of the default 64) no tile can be skipped usefully.
DEFAULT_MIN_SEQ_LEN = 128
_TORCH_SDPA = F.scaled_dot_product_attention
# Calls PyTorch itself rejects (wrong types or shapes) go to it silently, so it raises its error.
_LET_TORCH_RAISE = ""


def _batch_dims(t: torch.Tensor, layout: str) -> Tuple[int, ...]:
    """The dims SDPA broadcasts: all before [heads, tokens, head_dim] (HND; 3-D: before
    [tokens, head_dim]), or the batch of diffusers' [B, N, H, D]."""
    if layout != "HND":
        return tuple(t.shape[:1])
    return tuple(t.shape[:-3] if t.dim() >= 4 else t.shape[:-2])


def _broadcast_batch(tensors, layout: str):
    """q, k and v with their batch dims expanded to the common shape (views; copied on cuda,
    where the kernels' tensor maps want a nonzero batch stride)."""
    shapes = [_batch_dims(t, layout) for t in tensors]
    if len(set(shapes)) == 1:
        return tensors
    common = torch.broadcast_shapes(*shapes)
    out = []
    for t, shape in zip(tensors, shapes):
        if shape != tuple(common):
            rest = t.shape[len(shape):]
            t = t.expand(*common, *rest)
            t = t.contiguous() if t.is_cuda else t
        out.append(t)
    return tuple(out)


def _fallback_reason(query, key, value, attn_mask, dropout_p, enable_gqa, min_seq_len,
                     layout: str = "HND", scale=None) -> Optional[str]:
    """Why PyTorch must serve this SDPA-like call, "" to let PyTorch raise its own error, or
    None when Sparge serves it. `layout` "HND" is SDPA's [B, H, N, D] (or 3-D [B, N, D]);
    "NHD" is diffusers' token-major [B, N, H, D]."""
    tensors = (query, key, value)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return _LET_TORCH_RAISE
    if dropout_p > 0.0:
        return "dropout_p > 0 (Sparge has no attention dropout)"
    # SDPA takes any scale; Sparge's kernels take the max of the raw scores as that of the
    # scaled ones, which needs scale > 0 (0 is uniform attention, NaN gives NaN rows in PyTorch).
    if scale is not None:
        try:
            scale_value = float(scale)
        except (TypeError, ValueError):
            return _LET_TORCH_RAISE
        if not (math.isfinite(scale_value) and scale_value > 0):
            return f"scale {scale_value} (Sparge takes a finite scale > 0)"
    if attn_mask is not None:
        return mask_reason("an attn_mask")
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "gradients requested (Sparge is inference-only)"
    # SDPA's [..., H, N, D]: 3-D is one head, more than 4-D several batch dims (flattened into
    # one by the router when q, k and v share them).
    if len({t.dim() for t in tensors}) != 1 or query.dim() < 3 or \
            (layout != "HND" and query.dim() != 4):
        return ("inputs are not [batch..., (heads,) tokens, head_dim] alike" if layout == "HND"
                else "inputs are not 4-D [batch, tokens, heads, head_dim]")
    try:  # SDPA broadcasts the batch dims: the router expands them to the common shape
        torch.broadcast_shapes(*(_batch_dims(t, layout) for t in tensors))
    except RuntimeError:
        return _LET_TORCH_RAISE
    if query.shape[-1] != key.shape[-1]:
        return _LET_TORCH_RAISE  # SDPA's own error (value's head dim may differ: served)
    if max(query.shape[-1], value.shape[-1]) > 256:
        return "head_dim > 256"
    head_axis, token_axis = (-3, -2) if layout == "HND" else (2, -3)
    # Query heads a multiple of the key heads: GQA when asked, and one key head broadcast
    # (SDPA's broadcasting, the same result) even when not.
    if query.dim() >= 4 and (key.shape[head_axis] != value.shape[head_axis] or (
            query.shape[head_axis] != key.shape[head_axis] and key.shape[head_axis] != 1 and
            not (enable_gqa and query.shape[head_axis] % key.shape[head_axis] == 0))):
        return _LET_TORCH_RAISE
    if query.device.type not in ("cpu", "cuda"):
        return f"device {query.device.type} (Sparge runs on cpu and cuda)"
    allowed = (torch.float16, torch.bfloat16) if query.is_cuda else \
        (torch.float32, torch.float16, torch.bfloat16)
    if any(t.dtype != query.dtype for t in tensors) or query.dtype not in allowed:
        return f"dtype {query.dtype} on {query.device.type} (supported: {allowed})"
    if query.shape[token_axis] < min_seq_len or key.shape[token_axis] < min_seq_len:
        return f"sequence shorter than min_seq_len={min_seq_len}"
    return None


def mask_reason(what: str) -> str:
    """The fallback reason of a call whose attn_mask Sparge cannot serve, saying what it serves."""
    return (f"attn_mask that Sparge cannot serve here: {what}. Sparge serves any bool or float "
            "attn_mask that broadcasts to [batch, heads, Nq, Nk] on cpu tensors; on cuda only "
            "with head dims up to 128, exact or quantized=\"int8\", and without "
            "target_error (any other cuda call Sparge serves when the mask is a band: all-true, "
            "causal or a sliding window, possibly cut per batch entry by right padding). Pass "
            "is_causal=True, or call sparge.attention with window_left / window_right / "
            "key_lengths, or change the options")


def _cuda_takes_mask(query, options: Optional[Dict]) -> bool:
    """Whether Sparge's CUDA backend serves a dense attn_mask with these options (the C++
    backend's check_dense_mask, said before a call so that patch_sdpa falls back instead of
    raising): no error target (no backend takes one with a mask), exact or quantized "int8",
    head dim <= 128 (the mma.sync kernel's 64 or 128, smaller ones padded)."""
    o = options or {}
    return (not o.get("target_error") and o.get("quantized", False) in (False, "none", "int8")
            and query.shape[-1] <= 128)


def _general_mask_reason(attn_mask, query, scores, options: Optional[Dict] = None
                         ) -> Optional[str]:
    """None when sparge.attention can take `attn_mask` itself (cpu, bool or float, broadcasting
    to the score shape; on cuda with the `options` it takes there), else why not
    ("" to let PyTorch raise its own error). Reads no values, so torch.compile traces it."""
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        return _LET_TORCH_RAISE
    try:
        if attn_mask.dim() > 4 or torch.broadcast_shapes(attn_mask.shape, scores) != scores:
            return _LET_TORCH_RAISE
    except RuntimeError:
        return _LET_TORCH_RAISE
    if attn_mask.dtype not in (torch.bool, torch.float32, torch.float16, torch.bfloat16):
        return mask_reason(f"an attn_mask of dtype {attn_mask.dtype}")
    if attn_mask.device != query.device:
        return mask_reason(f"a mask on {attn_mask.device}, the inputs on {query.device}")
    if query.device.type != "cpu" and not (query.is_cuda and _cuda_takes_mask(query, options)):
        return mask_reason(f"a mask that is not a band, on {query.device.type}, with head dim "
                           f"{query.shape[-1]} and these options")
    return None


def torch_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False, layout: str = "HND"):
    """PyTorch's own SDPA (the function saved at import, never a patch), in either layout."""
    nhd = layout == "NHD"
    if nhd:
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))
    extra = {"enable_gqa": True} if enable_gqa else {}
    out = _TORCH_SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                      is_causal=is_causal, scale=scale, **extra)
    return out.transpose(1, 2) if nhd else out


@dataclass
class CallCounts:
    """What happened to the attention calls of one target: a patch, or one layer of a model.

    `sparge_calls` ran Sparge, `dense_calls` ran PyTorch's SDPA on purpose (a schedule's dense
    step or layer), `fallbacks` maps each reason Sparge could not serve a call to its count.
    `tiles_kept` / `tiles_dense` add up the tiles Sparge computed and the tiles dense (or causal)
    attention computes, over the Sparge calls made with stats collection on; `grid_calls`
    counts the Sparge calls that reordered tokens along a Hilbert curve.
    """
    sparge_calls: int = 0
    dense_calls: int = 0
    fallbacks: Dict[str, int] = field(default_factory=dict)
    tiles_kept: int = 0
    tiles_dense: int = 0
    grid_calls: int = 0

    @property
    def calls(self) -> int:
        return self.sparge_calls + self.dense_calls + sum(self.fallbacks.values())

    @property
    def sparsity(self) -> float:
        """Fraction of the dense (or causal) tiles skipped over the Sparge calls with stats."""
        return 1.0 - self.tiles_kept / self.tiles_dense if self.tiles_dense else 0.0

    def add(self, other: "CallCounts") -> None:
        self.sparge_calls += other.sparge_calls
        self.dense_calls += other.dense_calls
        for reason, count in other.fallbacks.items():
            self.fallbacks[reason] = self.fallbacks.get(reason, 0) + count
        self.tiles_kept += other.tiles_kept
        self.tiles_dense += other.tiles_dense
        self.grid_calls += other.grid_calls


class _Router:
    """Sparge options plus the per-reason warning bookkeeping of one patch (or of sdpa, or of a
    diffusers backend, or of a configuration of sparge.integrations.transformers, which calls
    `run` and `fall_back`). Maps an SDPA-like call onto sparge.attention or PyTorch's SDPA."""

    def __init__(self, min_seq_len: int, options: Dict, collect_stats: bool = False,
                 on_call: Optional[Callable[[CallInfo], None]] = None):
        if isinstance(min_seq_len, bool) or not isinstance(min_seq_len, int) or min_seq_len < 0:
            raise ValueError(f"min_seq_len must be an int >= 0, got {min_seq_len!r}")
        if not isinstance(collect_stats, bool):
            raise TypeError(f"collect_stats must be a bool, got {type(collect_stats).__name__}")
        if on_call is not None and not callable(on_call):
            raise TypeError(f"on_call must be callable (it gets a sparge.CallInfo per call), "
                            f"got {type(on_call).__name__}")
        unknown = set(options) - _ATTENTION_OPTIONS
        if unknown:
            raise TypeError(f"unknown Sparge option(s) {sorted(unknown)}; "
                            f"expected some of {sorted(_ATTENTION_OPTIONS)}")
        _check_early(options)
        self.min_seq_len = min_seq_len
        self.options = options
        self.collect_stats = collect_stats
        self.counts = CallCounts()  # the default target's
        # Called with each Sparge call's SparseStats when collect_stats is on (the tuner's).
        self.stats_listener: Optional[Callable[[ops.SparseStats], None]] = None
        # The user's per-call hook (CallInfo), or None: timing and stats are taken only for it.
        self.on_call = on_call
        self._warned = set()

    def fall_back(self, reason: str, counts: Optional[CallCounts] = None,
                  stacklevel: int = 3, call: Optional[Tuple] = None) -> None:
        """Counts a call PyTorch serves instead, warning the first time for each reason, and
        tells the on_call hook (`call`: (query, key, is_causal, layout) of the call)."""
        if self.on_call is not None and call is not None:
            self.on_call(CallInfo.of("sdpa", reason, *call))
        if reason not in self._warned:
            self._warned.add(reason)
            warnings.warn(f"sparge: using PyTorch attention: {reason}", SpargeFallbackWarning,
                          stacklevel=stacklevel)
        counts = self.counts if counts is None else counts
        counts.fallbacks[reason] = counts.fallbacks.get(reason, 0) + 1

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                 scale=None, enable_gqa=False, *, layout: str = "HND",
                 token_grid: Optional[Tuple[int, int, int]] = None, grid_offset: int = 0,
                 counts: Optional[CallCounts] = None, options: Optional[Dict] = None,
                 stacklevel: int = 4):
        counts = self.counts if counts is None else counts
        options = self.options if options is None else options
        mask_options = {}
        # Everything but the mask first: a mask is read only when Sparge would serve the call.
        reason = _fallback_reason(query, key, value, None, dropout_p, enable_gqa,
                                  self.min_seq_len, layout, scale)
        if reason is None:
            query, key, value = _broadcast_batch((query, key, value), layout)
        if attn_mask is not None and reason is None and query.dim() > 4:
            reason = "an attn_mask on inputs with more than one batch dim"
        if attn_mask is not None and reason is None:
            mask_options, reason = self._mask_as_options(attn_mask, query, key, is_causal,
                                                         layout, token_grid, options)
            if mask_options is not None:
                attn_mask = None
                is_causal = mask_options.pop("is_causal", is_causal)
                if query.dim() == 3 and mask_options.get("attn_mask") is not None and \
                        mask_options["attn_mask"].dim() == 3:  # [batch, Nq, Nk]: one head
                    mask_options["attn_mask"] = mask_options["attn_mask"].unsqueeze(1)
        if reason:
            self.fall_back(reason, counts, stacklevel=stacklevel,
                           call=(query, key, is_causal, layout))
        if reason is not None:
            return torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale,
                              enable_gqa, layout)
        three_d, batch_dims = query.dim() == 3, query.shape[:-3]
        if three_d:  # [batch, tokens, head_dim]: one head
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        elif query.dim() > 4:  # [batch..., heads, tokens, head_dim]: the batch dims as one
            query, key, value = (t.reshape(-1, *t.shape[-3:]) for t in (query, key, value))
        out = self.run(query, key, value, is_causal=bool(is_causal), scale=scale, layout=layout,
                       token_grid=token_grid, grid_offset=grid_offset, counts=counts,
                       options=options, **mask_options)
        if three_d:
            return out.squeeze(1)
        return out.reshape(*batch_dims, *out.shape[-3:]) if len(batch_dims) > 1 else out

    def _mask_as_options(self, attn_mask, query, key, is_causal, layout, token_grid,
                         call_options):
        """(options, None) with the per-call options that say what `attn_mask` says, or (None,
        the fallback reason). A mask that is all-true, causal or a sliding window becomes flags
        ({} for all-true; else is_causal, causal_align, window_left, window_right:
        _dense_mask.options_for_mask), which every device runs. Any other mask, and a band
        that flags cannot carry here (on a call that reorders tokens along a grid, or while
        `call_options` set a window of their own), is passed as {"attn_mask": mask} on cpu; on
        cuda it falls back. With is_causal also given, SDPA raises: PyTorch serves it. While
        torch.compile traces, the mask's values are not read (that would synchronize and break
        the graph): it is passed as it is on cpu."""
        if is_causal or not isinstance(attn_mask, torch.Tensor):
            return None, mask_reason("an attn_mask together with is_causal=True")
        token_axis = -2 if layout == "HND" else -3
        seq_q, seq_k = query.shape[token_axis], key.shape[token_axis]
        scores = (*query.shape[:-2], seq_q, seq_k) if layout == "HND" else \
            (query.shape[0], query.shape[2], seq_q, seq_k)
        if torch.compiler.is_compiling():
            why = "an attn_mask while torch.compile traces (reading its values would break the " \
                  "graph)"
        else:
            options, why = options_for_mask(attn_mask, seq_q, seq_k, scores)
            configured = [n for n in ("window_left", "window_right")
                          if call_options.get(n, -1) != -1]
            if options == {} or (options and token_grid is None and not configured):
                return options, None
            if options:
                why = ("a causal or sliding-window pattern on a call that reorders tokens along a "
                       "grid" if token_grid is not None else
                       f"a causal or sliding-window pattern while the patch sets {configured[0]}")
        general = _general_mask_reason(attn_mask, query, tuple(scores), call_options)
        if general is None:
            return {"attn_mask": attn_mask}, None
        return None, general if general == _LET_TORCH_RAISE else f"{general} ({why})"

    def run(self, query, key, value, *, is_causal: bool, scale=None,
            causal_align: Optional[str] = None, window_left: Optional[int] = None,
            window_right: Optional[int] = None, layout: str = "HND",
            token_grid: Optional[Tuple[int, int, int]] = None, grid_offset: int = 0,
            counts: Optional[CallCounts] = None, attn_mask: Optional[torch.Tensor] = None,
            key_lengths: Optional[torch.Tensor] = None, options: Optional[Dict] = None,
            key_blocks=None):
        """sparge.attention on 4-D inputs of `layout` with these options, counted in `counts`
        (the router's own by default; its tiles added up with collect_stats). `options`
        replace the router's for this call (a tune plan's layer). `causal_align`,
        `window_left` and `window_right` override the options' for this call (None: keep);
        `token_grid` reorders tokens along a Hilbert curve; `attn_mask` is SDPA's (cpu);
        `key_lengths` a right-padded batch's lengths (read off a padding mask, every device);
        `key_blocks` the sparge.KeyBlocks of a KV cache `key` is (a decode step)."""
        counts = self.counts if counts is None else counts
        counts.sparge_calls += 1
        options = self.options if options is None else options
        per_call = dict(causal_align=causal_align, window_left=window_left,
                        window_right=window_right, attn_mask=attn_mask, key_lengths=key_lengths,
                        key_blocks=key_blocks)
        per_call = {n: value for n, value in per_call.items() if value is not None}
        if per_call:
            options = dict(options, **per_call)
        if token_grid is not None:
            options = dict(options, token_grid=token_grid, grid_offset=grid_offset)
            counts.grid_calls += 1
        timer = _CallTimer(query.device) if self.on_call is not None else None
        out = ops.attention(query, key, value, is_causal=bool(is_causal),
                            scale=None if scale is None else float(scale), layout=layout,
                            return_stats=self.collect_stats or timer is not None, **options)
        if timer is not None:  # the hook's: eager only, it synchronizes
            out, stats = out
            self.on_call(CallInfo.of("sparge", None, query, key, is_causal, layout,
                                     ms=timer.stop(), sparsity=stats.sparsity, stats=stats))
            out = (out, stats) if self.collect_stats else out
        if self.collect_stats:  # eager only: reading the counts synchronizes
            out, stats = out
            kept, dense = stats.block_mask.tiles()
            counts.tiles_kept += int(kept)
            counts.tiles_dense += int(dense)
            if self.stats_listener is not None:
                self.stats_listener(stats)
        return out

    # The router's own counts (patch_sdpa's, a transformers configuration's).
    @property
    def sparge_calls(self) -> int:
        return self.counts.sparge_calls

    @property
    def fallbacks(self) -> Dict[str, int]:
        return self.counts.fallbacks

    @property
    def sparsity(self) -> float:
        """Fraction of the dense (or causal) tiles skipped over the calls Sparge served."""
        return self.counts.sparsity


# The keywords of sparge.attention that a patch passes through (is_causal, scale, dropout_p and
# enable_gqa come from each SDPA call, layout is always HND, stats are the patch's own business;
# key blocks belong to one KV cache, not to a patch).
_PER_CALL = {"is_causal", "scale", "layout", "return_stats", "attn_mask", "key_lengths",
             "key_blocks", "dropout_p", "enable_gqa"}
_ATTENTION_OPTIONS = {name for name, p in inspect.signature(ops.attention).parameters.items()
                      if p.kind is inspect.Parameter.KEYWORD_ONLY} - _PER_CALL


def _check_early(options: Dict) -> None:
    """The option checks of sparge.attention at patch time, so `patch_sdpa(block_q=0)` raises
    where it is written, not at the model's first attention call. Per-head thresholds fix the
    number of query heads; token_grid is checked per call (it depends on the sequence)."""
    keywords = {name: p.default for name, p in inspect.signature(ops.attention).parameters.items()
                if name in _ATTENTION_OPTIONS}
    keywords.update(options)
    keywords.pop("token_grid")
    keywords.pop("grid_offset")
    thresholds = ("sim_threshold", "cdf_threshold", "topk", "pv_threshold")
    per_head = [len(keywords[n]) for n in thresholds
                if isinstance(keywords[n], (list, tuple, torch.Tensor))]
    _options.check_options(_options.op_options(
        heads_q=per_head[0] if per_head else 1, scale=1.0, is_causal=False, **keywords))


_DEFAULT_ROUTER = _Router(DEFAULT_MIN_SEQ_LEN, {})


def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
         enable_gqa=False):
    """F.scaled_dot_product_attention with Sparge's default thresholds (same signature).

    Unsupported calls (see module doc) run PyTorch's SDPA, with one warning per reason.
    """
    return _DEFAULT_ROUTER(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


class _CallTimer:
    """Elapsed time of one call: CUDA events on cuda (then a synchronization), else the wall
    clock."""

    def __init__(self, device: torch.device):
        import time
        self._clock = time.perf_counter
        self._events = None
        if device.type == "cuda":
            self._events = (torch.cuda.Event(enable_timing=True),
                            torch.cuda.Event(enable_timing=True))
            self._events[0].record()
        else:
            self._start = self._clock()

    def stop(self) -> float:
        if self._events is None:
            return (self._clock() - self._start) * 1e3
        self._events[1].record()
        self._events[1].synchronize()
        return self._events[0].elapsed_time(self._events[1])


class patch_sdpa:
    """Context manager routing F.scaled_dot_product_attention to Sparge with these options.

    `min_seq_len`: shorter sequences run PyTorch's SDPA. `collect_stats=True` (eager only)
    adds up the tiles Sparge kept and the tiles dense attention computes (`sparsity`). Other
    keyword arguments are those of `sparge.attention` (thresholds, block sizes, backend, ...).
    After the block, `fallbacks` maps each fallback reason to its number of calls and
    `sparge_calls` counts the rest.

    `plan` (a sparge.TunePlan or the path of its JSON file, with the `model` it was tuned on):
    calls made while a layer of the plan is the innermost running module of `model` take that
    layer's fixed per-head thresholds (the plan's options over these ones, the error target
    off); calls from other layers take these options, with one warning per layer.

    `on_call` (eager only): a function called after every patched call with a sparge.CallInfo
    (who served it and why, the shape, and for Sparge's calls the time in ms, the tile sparsity
    and the SparseStats), to print or log; each Sparge call then synchronizes to be timed.
    """

    def __init__(self, *, min_seq_len: int = DEFAULT_MIN_SEQ_LEN, collect_stats: bool = False,
                 plan=None, model: Optional[torch.nn.Module] = None,
                 on_call: Optional[Callable[[CallInfo], None]] = None, **options):
        self._router = _Router(min_seq_len, options, collect_stats, on_call)
        if (plan is None) != (model is None):
            raise TypeError("plan and model go together: a plan's layers are named after "
                            "model.named_modules(), so give both (or neither)")
        # While the patch is active, each call is attributed to the innermost running module
        # of `_model`, and `_route(layer, query, key)` gives the (options, counts) of a call
        # made there, None for the router's own: a plan's layer options; the tuner's counts.
        self._model = model
        self._route = None
        if plan is not None:
            from .tune_plan import PlanRoute, as_plan  # tune_plan imports this module
            ModuleStack(model)  # checks the model's type here, not at __enter__
            self._route = PlanRoute(as_plan(plan), options)
        self._saved = []

    @property
    def sparsity(self) -> float:
        """Fraction of the dense (or causal) tiles skipped over the calls Sparge served."""
        return self._router.sparsity

    @property
    def fallbacks(self) -> Dict[str, int]:
        return dict(self._router.counts.fallbacks)

    @property
    def counts(self) -> CallCounts:
        """A copy of everything counted so far: Sparge calls, fallbacks per reason, and the
        tiles kept and dense over the calls made with collect_stats (to add up several runs)."""
        counts = CallCounts()
        counts.add(self._router.counts)
        return counts

    @property
    def sparge_calls(self) -> int:
        return self._router.counts.sparge_calls

    def __enter__(self):
        router = self._router
        layers = ModuleStack(self._model).__enter__() if self._model is not None else None

        def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                         is_causal=False, scale=None, enable_gqa=False):
            options = counts = None
            if layers is not None:
                options, counts = self._route(layers.current, query, key)
            return router(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                          options=options, counts=counts)

        torch_mha = F.multi_head_attention_forward

        def multi_head_attention_forward(*args, **kwargs):
            # MultiheadAttention passes need_weights by keyword; its default is True.
            if kwargs.get("need_weights", True):
                reason = ("nn.MultiheadAttention with need_weights=True (Sparge returns no "
                          "attention weights; call it with need_weights=False)")
                router.fall_back(reason, stacklevel=3)
                if router.on_call is not None:
                    router.on_call(_mha_call_info(reason, args, kwargs))
            return torch_mha(*args, **kwargs)

        self._saved.append((F.scaled_dot_product_attention, F.multi_head_attention_forward,
                            _mha_fast_path(None), layers))
        F.scaled_dot_product_attention = scaled_dot_product_attention
        F.multi_head_attention_forward = multi_head_attention_forward
        _mha_fast_path(False)  # the fused fast path calls no SDPA: it would bypass the patch
        return self

    def __exit__(self, *exc):
        sdpa_fn, mha_fn, fast_path, layers = self._saved.pop()
        if layers is not None:
            layers.__exit__(*exc)
        F.scaled_dot_product_attention = sdpa_fn
        F.multi_head_attention_forward = mha_fn
        _mha_fast_path(fast_path)
        return False


def _mha_call_info(reason: str, args, kwargs) -> CallInfo:
    """The CallInfo of an F.multi_head_attention_forward call PyTorch serves: query [L, N, E]
    or [L, E], key [S, N, E] or [S, E], num_heads (sequence-first, as the function takes them)."""
    names = ("query", "key", "value", "embed_dim_to_check", "num_heads")
    given = dict(zip(names, args), **{n: kwargs[n] for n in names if n in kwargs})
    query, key, heads = given["query"], given["key"], int(given["num_heads"])
    batch = query.shape[1] if query.dim() == 3 else 1
    return CallInfo("sdpa", reason, batch, heads, heads, query.shape[0], key.shape[0],
                    query.shape[-1] // heads, query.dtype, query.device,
                    bool(kwargs.get("is_causal", False)))


def _mha_fast_path(enabled: Optional[bool]) -> bool:
    """nn.MultiheadAttention's fast-path switch (torch.backends.mha); sets it unless None and
    returns the previous value."""
    mha = torch.backends.mha
    previous = mha.get_fastpath_enabled()
    if enabled is not None:
        mha.set_fastpath_enabled(enabled)
    return previous

