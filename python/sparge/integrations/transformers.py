"""Sparge as an attention implementation of Hugging Face transformers, named "sparge".

    import sparge
    sparge.integrations.transformers.register()      # once per process
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sparge")
    model.set_attn_implementation("sparge")          # or switch a loaded model

    from sparge.integrations import transformers as sparge_hf
    with sparge_hf.configure(cdf_threshold=0.95, collect_stats=True) as run:
        model.generate(**inputs)
    run.sparge_calls, run.fallbacks, run.sparsity

`register()` adds the name to transformers' public registries: the attention function to
`AttentionInterface` and, to `AttentionMaskInterface`, the mask builder of the "sdpa"
implementation, which leaves out masks that `is_causal` or no mask can say (a causal LM without
padding gets `is_causal`, an encoder without padding no mask). Registration is explicit, not
done by `import sparge`: importing transformers takes seconds, and a hook on its import would
be hidden global state. Every attention layer written against `AttentionInterface` (the
models whose source calls `ALL_ATTENTION_FUNCTIONS.get_interface`) then runs this module's
`attention_forward`.

Sparge serves every call whose attention it can compute as transformers' "sdpa" does (the same
result up to the tiles it skips), and hands the others to that very function
(`sdpa_attention_forward`), counting them and warning once per reason
(`sparge.SpargeFallbackWarning`): on cuda a dense mask other than all-true, causal or a sliding
window (padding, packed sequences; on cpu Sparge takes such masks itself), `softcap` or
`position_bias`, and the reasons of `sparge.patch_sdpa` (gradients, dtypes and devices the kernels lack, head dims over 256, calls shorter than
`min_seq_len`). Sliding-window layers (Gemma 2/3, Mistral, Qwen2, ...; transformers passes their
`sliding_window` W to the attention function) run Sparge's native window: W keys up to and
including the diagonal, i.e. is_causal with window_left = W - 1 where transformers left the
mask out, and what the mask says (read as a band) where it built one. Dropout > 0 (a model in training mode) raises: Sparge is
inference-only. Attention sinks (`s_aux`) raise: neither Sparge nor SDPA has them. The active
configuration is process-wide (not per model, not per thread).
"""
from typing import Dict, Optional

import torch

from .. import patch
from .._dense_mask import options_for_mask
from .._options import DEFAULTS
from ..key_blocks import KeyBlocks

#: The attn_implementation name `register()` uses by default.
NAME = "sparge"

# Options of sparge.attention that the model decides per call, not the user.
_PER_CALL = {"causal_align", "window_left", "window_right"}


class Configuration:
    """Sparge's options for the "sparge" attention, and what the calls made under them did.

    Made by `configure()`, which makes it the active one at once; as a context manager it also
    restores, on exit, the configuration that was active before it.
    """

    def __init__(self, *, min_seq_len: int = 0, collect_stats: bool = False,
                 decode_key_blocks: bool = True, on_call=None, plan=None,
                 model: Optional[torch.nn.Module] = None, **options):
        if not isinstance(decode_key_blocks, bool):
            raise TypeError(f"decode_key_blocks must be a bool, got "
                            f"{type(decode_key_blocks).__name__}")
        per_call = sorted(_PER_CALL & set(options))
        if per_call:
            raise TypeError(f"{per_call[0]} cannot be configured: it is set per call from the "
                            "model's mask and sliding_window (SDPA's is_causal is top_left; a "
                            "mask that is exactly bottom-right causal gives bottom_right; a "
                            "sliding-window layer gives its window)")
        self._router = patch._Router(min_seq_len, options, collect_stats, on_call)
        self.decode_key_blocks = decode_key_blocks
        self._previous: Optional["Configuration"] = None
        # A tune plan: each attention module's name in `model` (the plan's keys, as the tuner's
        # patch_sdpa saw them: the innermost module running at the SDPA call, which in
        # transformers is the attention module "sparge" is called with).
        self._route, self._layer_names = None, {}
        if (plan is None) != (model is None):
            raise TypeError("plan and model go together: a plan's layers are named after "
                            "model.named_modules(), so give both (or neither)")
        if plan is not None:
            if not isinstance(model, torch.nn.Module):
                raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
            from ..tune_plan import PlanRoute, as_plan
            self._route = PlanRoute(as_plan(plan), options)
            self._layer_names = {m: name for name, m in model.named_modules()}

    def layer_options(self, module, query, key) -> Optional[Dict]:
        """The options of a call in `module`: its layer's in the tune plan, else None (the
        configuration's own; an attention module the plan does not name warns once)."""
        if self._route is None:
            return None
        return self._route(self._layer_names.get(module), query, key)[0]

    @property
    def options(self) -> Dict:
        """The keyword arguments every Sparge call gets (besides is_causal, scale, ...)."""
        return dict(self._router.options)

    @property
    def min_seq_len(self) -> int:
        return self._router.min_seq_len

    @property
    def collect_stats(self) -> bool:
        return self._router.collect_stats

    @property
    def sparge_calls(self) -> int:
        """Attention calls Sparge served."""
        return self._router.sparge_calls

    @property
    def fallbacks(self) -> Dict[str, int]:
        """Calls handed to transformers' SDPA attention, per reason."""
        return dict(self._router.fallbacks)

    @property
    def sparsity(self) -> Optional[float]:
        """Fraction of the dense (or causal) tiles Sparge skipped over its calls; None unless
        collect_stats (reading the counts synchronizes with the GPU after every call)."""
        return self._router.sparsity if self._router.collect_stats else None

    def __enter__(self) -> "Configuration":
        return self

    def __exit__(self, *exc) -> bool:
        global _ACTIVE
        if self._previous is not None:
            _ACTIVE, self._previous = self._previous, None
        return False

    def __repr__(self) -> str:
        return (f"Configuration(min_seq_len={self.min_seq_len}, "
                f"collect_stats={self.collect_stats}, "
                f"decode_key_blocks={self.decode_key_blocks}, options={self.options}; "
                f"sparge_calls={self.sparge_calls}, fallbacks={self.fallbacks})")


_ACTIVE = Configuration()


def configure(*, min_seq_len: int = 0, collect_stats: bool = False,
              decode_key_blocks: bool = True, on_call=None, plan=None,
              model: Optional[torch.nn.Module] = None, **options) -> Configuration:
    """Makes these the options of every "sparge" attention call from now on and returns the new
    configuration, whose counters start at zero. Options are the keywords of `sparge.attention`
    (sim_threshold, cdf_threshold, topk, pv_threshold, block_q, backend, ...), checked here:
    an unknown name or a value out of range raises naming the option.

    `min_seq_len`: calls whose query or key length is shorter go to SDPA (default 0: every call
    runs Sparge; with more than 1, decoding steps go to SDPA). `collect_stats`: add up the tiles
    Sparge kept, for `sparsity` (eager only). `decode_key_blocks` (cpu): decoding steps (one
    query row against the layer's KV cache) read Stage 1's key side from sparge.KeyBlocks kept on
    each attention module and extended as the cache grows, instead of pooling the whole cache
    every step (`_decode_key_blocks` says when they are rebuilt). `on_call`: a function given a
    sparge.CallInfo after every call (as patch_sdpa's; Sparge's calls are timed, which
    synchronizes). `plan` (a sparge.TunePlan or the path of its JSON file, with the `model` it
    was tuned on, as patch_sdpa takes them): each attention module the plan names takes its
    layer's per-head thresholds (the plan's options over these ones, the error target off);
    others take these options, with one warning per module. Used as
    `with configure(...) as run:`, the previous configuration comes back after the block.
    """
    global _ACTIVE
    new = Configuration(min_seq_len=min_seq_len, collect_stats=collect_stats,
                        decode_key_blocks=decode_key_blocks, on_call=on_call, plan=plan,
                        model=model, **options)
    new._previous, _ACTIVE = _ACTIVE, new
    return new


def active() -> Configuration:
    """The configuration the "sparge" attention uses now, with its counters."""
    return _ACTIVE


def _require_transformers():
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as err:
        raise ImportError(
            "sparge.integrations.transformers needs Hugging Face transformers with "
            "AttentionInterface and AttentionMaskInterface (tested with 5.17.0): "
            f"pip install transformers ({err})") from err
    return AttentionInterface, AttentionMaskInterface, sdpa_mask, sdpa_attention_forward


def register(name: str = NAME) -> str:
    """Makes `attn_implementation=name` (default "sparge") select Sparge in transformers, for
    `from_pretrained` and `set_attn_implementation`. Idempotent; imports transformers."""
    attention, masks, sdpa_mask, _ = _require_transformers()
    attention.register(name, attention_forward)
    masks.register(name, sdpa_mask)  # the "sdpa" masks: None or a boolean [B, 1, Nq, Nk]
    return name


def _plan(module, query, key, attention_mask, kwargs, call_options=None):
    """(None, options) when Sparge computes what "sdpa" would, with the per-call options
    (is_causal, and causal_align, window_left, window_right where not the defaults), else
    (why not, None): the reasons that are about the model's arguments, before those of
    patch_sdpa. `call_options`: the call's Sparge options (whether CUDA takes a dense mask with
    them)."""
    if kwargs.get("softcap") is not None:
        return ("attention-logit soft-capping (softcap; Sparge has none, and transformers' "
                "'sdpa' ignores it as well)"), None
    if kwargs.get("position_bias") is not None:
        return "an additive position_bias (Sparge takes no bias)", None
    q_len, k_len = query.shape[2], key.shape[2]
    if attention_mask is not None:
        # The mask is what "sdpa" computes with (sliding_window included, as are padding or
        # packing): read it as a band, possibly cut by right padding (then key_lengths too).
        scores = (query.shape[0], query.shape[1], q_len, k_len)
        options, why = options_for_mask(attention_mask, q_len, k_len, scores)
        if options is not None:
            return None, dict(dict(is_causal=False), **options)
        # Left padding or packing: Sparge takes the mask itself (on cuda with the options its
        # dense-mask path takes).
        general = patch._general_mask_reason(attention_mask, query, scores, call_options)
        if general is None:
            return None, dict(is_causal=False, attn_mask=attention_mask)
        if general == "":
            return (f"an attention mask Sparge cannot read ({why})"), None
        return (f"an attention mask that is neither all-true, causal nor a sliding window, "
                f"possibly right-padded ({why}), on {query.device.type} with options Sparge's "
                f"CUDA dense-mask path does not take (target_error, quantized=\"int8_fp8\", head "
                f"dim over 128); change them, or pad on the right, to stay on Sparge"), None
    # No mask, as "sdpa": the module's causality (is_causal may come per call); a single query
    # row (decoding) sees every key.
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    options = dict(is_causal=bool(is_causal) and q_len > 1)
    window = kwargs.get("sliding_window")
    if options["is_causal"] and isinstance(window, int) and not isinstance(window, bool) \
            and window >= 1:
        # transformers' sliding window W: key j for query i iff i - W < j <= i. Without a mask
        # (transformers leaves it out only where the window hides no key) this changes no
        # result, and tells Stage 1 which blocks are out of reach.
        options["window_left"] = window - 1
    return None, options


# Options under which a decode step may take its key side from KeyBlocks: the pooled estimate
# ("auto" is pooled at a decode step; sampled rows and the error target read the keys) and the
# keys in cache order. `layer`: a tune plan's options for the call (None: the configuration's).
def _key_blocks_serve(config: Configuration, query, key, options: Dict,
                      layer: Optional[Dict] = None) -> bool:
    o = config.options if layer is None else layer
    return (config.decode_key_blocks and key.device.type == "cpu" and query.shape[2] == 1
            and not options and o.get("estimate", "pooled") in ("pooled", "auto")
            and not o.get("target_error") and o.get("token_grid") is None)


def _decode_key_blocks(module, key, block_k: int):
    """The KeyBlocks of `key` (the layer's whole KV cache at a decode step), kept on the module
    between steps and extended by the new keys. They are built again (taking the cache's current
    mean, with room for twice its length) when there are none yet, when the cache no longer
    continues what they cover (another shape, a shorter cache, or the last key they cover
    changed: a new prompt, a reordered beam), and when the cache has doubled since they were
    built (which keeps their mean close to the cache's; amortized, one rebuild per doubling).
    Stale blocks could only change which tiles are kept, never the attention of the kept ones."""
    n = key.shape[2]
    kb = getattr(module, "_sparge_key_blocks", None)
    stale = (kb is None or kb.block_k != block_k or kb.pooled.device != key.device
             or tuple(kb.pooled.shape[:2]) != tuple(key.shape[:2])
             or kb.pooled.shape[2] != key.shape[3] or not kb.tokens <= n <= kb.max_tokens
             or n >= 2 * kb.built_at
             or not torch.equal(key[:, :, kb.tokens - 1], kb.last_key))
    if stale:
        kb = KeyBlocks.build(key, max_tokens=2 * n, block_k=block_k)
        kb.built_at = n
        module._sparge_key_blocks = kb
    elif n > kb.tokens:
        kb.append(key)
    kb.last_key = key[:, :, n - 1].clone()
    return kb


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                      **kwargs):
    """The "sparge" attention function: transformers' contract, as its "sdpa" one.

    query [B, Hq, Nq, D], key and value [B, Hkv, Nk, D] (GQA: Hq = Hkv *
    module.num_key_value_groups, served without repeating K/V), `attention_mask` None or what
    the registered mask builder made. Returns (attn_output [B, Nq, Hq, D], None).
    """
    if dropout:
        training = " (the module is in training mode)" if getattr(module, "training", False) \
            else ""
        raise RuntimeError(
            f"sparge attention is inference-only (no attention dropout), but "
            f"{type(module).__name__} asked for dropout={dropout}{training}: call model.eval() "
            "for inference, or train with attn_implementation='sdpa'")
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError(
            "attention sinks (s_aux) are in neither Sparge nor PyTorch SDPA: load this model "
            "with attn_implementation='eager' or 'flex_attention'")
    config = _ACTIVE
    run = config._router
    layer = config.layer_options(module, query, key)
    reason, options = _plan(module, query, key, attention_mask, kwargs,
                            config.options if layer is None else layer)
    if reason is None:
        reason = patch._fallback_reason(query, key, value, None, 0.0, True, run.min_seq_len,
                                        scale=scaling)
    if reason is not None:
        if reason:  # the warning points at the model's layer
            causal = kwargs.get("is_causal", getattr(module, "is_causal", True))
            run.fall_back(reason, stacklevel=3, call=(query, key, bool(causal), "HND"))
        sdpa_attention_forward = _require_transformers()[3]
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    is_causal = options.pop("is_causal")
    q_len = query.shape[2]
    if attention_mask is None and is_causal and key.shape[2] > q_len:
        # A prefill into an empty static cache (the only maskless causal call with more keys
        # than queries): the keys past the queries are hidden anyway; "sdpa" cuts them off too.
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    if _key_blocks_serve(config, query, key, options, layer):
        block_k = (config.options if layer is None else layer).get("block_k", DEFAULTS["block_k"])
        options["key_blocks"] = _decode_key_blocks(module, key, block_k)
    out = run.run(query, key, value, is_causal=is_causal, scale=scaling, options=layer, **options)
    return out.transpose(1, 2).contiguous(), None


__all__ = ["NAME", "Configuration", "active", "attention_forward", "configure", "register"]
