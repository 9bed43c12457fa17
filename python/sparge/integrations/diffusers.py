"""Sparge as a diffusers attention backend named "sparge".

    import sparge.integrations.diffusers as sparge_diffusers

    with sparge_diffusers.attention_backend(pipe.transformer, grid="auto") as sparge_run:
        video = pipe(prompt)
    print(sparge_run.report())                 # calls, sparsity and fallbacks per layer

or, through diffusers' own per-model switch:

    backend = sparge_diffusers.register(pipe.transformer, cdf_threshold=0.95)
    pipe.transformer.set_attention_backend("sparge")

Every attention call diffusers makes through `dispatch_attention_fn` (the processors of Wan,
Flux, HunyuanVideo, LTX, QwenImage, ... in diffusers 0.42) is then served by `sparge.attention`
in diffusers' token-major [B, N, H, D] layout, with the fallbacks of `sparge.patch_sdpa`
(dropout, an explicit attn_mask, short sequences, gradients, unsupported dtypes run PyTorch's
SDPA, one SpargeFallbackWarning per reason). Models whose processors call
F.scaled_dot_product_attention directly (SD3, CogVideoX in 0.42) never reach a diffusers
backend: use `sparge.patch_sdpa()` for them.

diffusers' backend names are a closed Enum (AttentionBackendName; its "sparge" entry is a
comment), and neither `set_attention_backend` nor `attention_backend` accepts a name outside it.
`_install` adds the member and registers the function with diffusers' registry: private API,
kept to that one function, which checks what it relies on and raises a RuntimeError naming the
diffusers version when it changed. Tested with diffusers 0.42.1.
"""
import enum
import math
import warnings
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch

from .. import patch as _patch

try:
    import diffusers as _diffusers
    from diffusers.models import attention_dispatch as _dispatch
except ImportError as exc:  # pragma: no cover - exercised only without diffusers
    raise ImportError("sparge.integrations.diffusers needs diffusers (tested with 0.42.1): "
                      "pip install diffusers") from exc

BACKEND_NAME = "sparge"
_MEMBER_NAME = "SPARGE"
TESTED_DIFFUSERS = "0.42.1"
# The key of the calls made outside any layer the backend knows (no model attached).
UNKNOWN_LAYER = "(unknown layer)"
TEXT_POSITIONS = ("first", "last")

Grid = Tuple[int, int, int]


def _install():
    """Makes "sparge" a member of diffusers' AttentionBackendName and registers `_backend_fn`
    for it in `_AttentionBackendRegistry` (idempotent). Returns the member.

    The only private diffusers API this module uses. diffusers 0.42 offers no public way to add
    a backend: `AttentionBackendName(name)` must succeed for `set_attention_backend`,
    `attention_backend` and `dispatch_attention_fn`, and the enum is closed. Python has no
    public call that extends an Enum either, so the member is added the way Enum's own class
    construction records one (_member_map_, _member_names_, _value2member_map_).
    """
    enum_cls = getattr(_dispatch, "AttentionBackendName", None)
    registry = getattr(_dispatch, "_AttentionBackendRegistry", None)
    relied_on = ["_backends", "_constraints", "_supported_arg_names", "register"]
    problem = None
    if not (isinstance(enum_cls, enum.EnumMeta) and issubclass(enum_cls, str)):
        problem = "diffusers.models.attention_dispatch.AttentionBackendName is no str Enum"
    elif not all(hasattr(enum_cls, n) for n in
                 ("_member_map_", "_member_names_", "_value2member_map_")):
        problem = "this Python's Enum keeps its members differently"
    elif registry is None or not all(hasattr(registry, n) for n in relied_on):
        problem = ("diffusers.models.attention_dispatch._AttentionBackendRegistry lacks one of "
                   f"{relied_on}")
    if problem:
        raise RuntimeError(
            f"sparge.integrations.diffusers cannot add the 'sparge' attention backend to "
            f"diffusers {_diffusers.__version__}: {problem}. It was written against diffusers "
            f"{TESTED_DIFFUSERS}; until it is updated, use sparge.patch_sdpa() around the model "
            f"with the 'native' backend.")
    member = enum_cls._value2member_map_.get(BACKEND_NAME)
    if member is None:
        member = str.__new__(enum_cls, BACKEND_NAME)
        member._name_, member._value_ = _MEMBER_NAME, BACKEND_NAME
        member.__objclass__ = enum_cls
        member._sort_order_ = len(enum_cls._member_names_)
        setattr(enum_cls, _MEMBER_NAME, member)  # before _member_map_, which forbids rebinding
        enum_cls._member_map_[_MEMBER_NAME] = member
        enum_cls._member_names_.append(_MEMBER_NAME)
        enum_cls._value2member_map_[BACKEND_NAME] = member
    existing = registry._backends.get(member)
    if existing is not None and existing is not _backend_fn:
        warnings.warn(f"diffusers {_diffusers.__version__} registers its own 'sparge' backend; "
                      "sparge.integrations.diffusers replaces it with sparge.attention")
    if existing is not _backend_fn:
        registry.register(member)(_backend_fn)
    if enum_cls(BACKEND_NAME) is not member or registry._backends.get(BACKEND_NAME) \
            is not _backend_fn:
        raise RuntimeError(f"sparge.integrations.diffusers: registering 'sparge' with diffusers "
                           f"{_diffusers.__version__} did not take effect (written against "
                           f"{TESTED_DIFFUSERS}); use sparge.patch_sdpa() instead.")
    return member


def _backend_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                enable_gqa=False, return_lse=False, _parallel_config=None):
    """The function diffusers' dispatch_attention_fn calls for "sparge" (tensors [B, N, H, D]).
    diffusers passes only the keywords this signature names."""
    if _parallel_config is not None:
        raise NotImplementedError("the 'sparge' attention backend does not support diffusers' "
                                  "context parallelism (parallel_config); use a backend that "
                                  "does, or run without it")
    if return_lse:
        raise NotImplementedError("the 'sparge' attention backend does not return the LSE "
                                  "(return_lse=True)")
    return current_backend()._attend(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                     enable_gqa)


class Schedule:
    """Dense attention for the first `dense_steps` denoising steps and for `dense_layers`,
    Sparge elsewhere.

    `dense_layers` holds layer indices (ints: the position among the attached model's
    attention modules, `SpargeBackend.layer_names`) or module names (strs, e.g. "blocks.0"
    matches "blocks.0.attn1" and "blocks.0.attn2"); naming layers needs the model.
    `step_index` is the current denoising step: advance it with `step()`, or pass
    `callback_on_step_end=schedule.on_step_end` to the pipeline. Entering
    `attention_backend(...)` resets it to 0; call `reset()` between two pipeline runs in one
    block.
    """

    def __init__(self, dense_steps: int = 0, dense_layers: Iterable[Union[int, str]] = ()):
        if isinstance(dense_steps, bool) or not isinstance(dense_steps, int) or dense_steps < 0:
            raise ValueError(f"dense_steps must be an int >= 0, got {dense_steps!r}")
        if isinstance(dense_layers, (str, int)) or not hasattr(dense_layers, "__iter__"):
            raise TypeError("dense_layers must be a set or list of layer indices (int) or "
                            f"module names (str), got {dense_layers!r}")
        layers = set(dense_layers)
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, (int, str)) or \
                    (isinstance(layer, int) and layer < 0) or layer == "":
                raise ValueError("dense_layers must hold layer indices (int >= 0) or module "
                                 f"names (non-empty str), got {layer!r}")
        self.dense_steps = dense_steps
        self.dense_layers = frozenset(layers)
        self.step_index = 0

    def step(self, count: int = 1) -> None:
        """Advances the denoising step counter."""
        self.step_index += count

    def reset(self) -> None:
        self.step_index = 0

    def on_step_end(self, pipeline, step_index, timestep, callback_kwargs):
        """A diffusers `callback_on_step_end`: the next step is step_index + 1."""
        self.step_index = int(step_index) + 1
        return callback_kwargs

    def is_dense(self, index: Optional[int], name: Optional[str]) -> bool:
        if self.step_index < self.dense_steps:
            return True
        return index is not None and (index in self.dense_layers or any(
            isinstance(layer, str) and _name_matches(name, layer) for layer in self.dense_layers))

    def __repr__(self):
        return (f"Schedule(dense_steps={self.dense_steps}, dense_layers="
                f"{set(self.dense_layers) or set()}, step_index={self.step_index})")


def _name_matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".")


def _attention_classes():
    """The module classes diffusers' own set_attention_backend visits."""
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention, MochiAttention
    return (Attention, MochiAttention, AttentionModuleMixin)


def _check_grid(grid, model) -> Union[None, str, Grid]:
    if grid is None:
        return None
    if isinstance(grid, str):
        if grid != "auto":
            raise ValueError(f"grid must be None, 'auto' or (frames, height, width), got {grid!r}")
        if model is None:
            raise ValueError("grid='auto' reads the grid from the model's input: pass the model "
                             "(attention_backend(model, grid='auto'))")
        return grid
    if not (isinstance(grid, (tuple, list)) and len(grid) == 3 and all(
            isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid)):
        raise ValueError("grid must be None, 'auto' or a tuple of 3 ints >= 1 (frames, height, "
                         f"width) in patches, got {grid!r}")
    return tuple(grid)


def model_grid(model, hidden_states) -> Optional[Grid]:
    """The patch grid (frames, height, width) of a transformer's input latents, from their shape
    and `model.config.patch_size` (and `patch_size_t`): [B, C, F, H, W] for video, [B, C, H, W]
    for images. None when the input is already a token sequence (e.g. Flux's packed latents)."""
    config = getattr(model, "config", None)
    patch = getattr(config, "patch_size", None)
    if not isinstance(hidden_states, torch.Tensor) or patch is None:
        return None
    shape = tuple(hidden_states.shape)
    if isinstance(patch, int):
        patch_t = getattr(config, "patch_size_t", None) or 1
        patch = (patch_t, patch, patch)
    patch = tuple(int(p) for p in patch)
    if len(shape) == 5 and len(patch) == 3:
        sizes = shape[2:]
    elif len(shape) == 4 and len(patch) in (2, 3):
        sizes, patch = (1, *shape[2:]), (1, *patch[-2:])
    else:
        return None
    return tuple(max(1, s // p) for s, p in zip(sizes, patch))


class SpargeBackend:
    """The settings and statistics of the "sparge" diffusers backend.

    model:         the transformer (optional). With it, calls are counted per attention layer
                   (named as in model.named_modules()), `dense_layers` can name layers and
                   grid="auto" works. Its forward hooks are installed by `attach()` (done by
                   `register` and, for the block, by the context manager).
    grid:          None (natural token order), (frames, height, width) in patches, or "auto"
                   (read from the model's input latents and config.patch_size at each
                   forward). Self-attention whose length is the grid's token count plus some
                   text tokens runs in Hilbert order over the grid; the text tokens stay in
                   natural order.
    text_position: where joint attention puts the text tokens: "first" (Flux, QwenImage) or
                   "last" (HunyuanVideo). Wan's self-attention has none.
    schedule:      a Schedule (dense steps and layers), or None (Sparge everywhere).
    min_seq_len:   shorter sequences run PyTorch's SDPA (default 128).
    collect_stats: add up Sparge's tile sparsity per layer (synchronizes on the GPU).
    on_call:       a function given a sparge.CallInfo after every attention call (Sparge's
                   timed, which synchronizes; the schedule's dense calls as impl "sdpa").
    plan:          a sparge.TunePlan or the path of its JSON file, tuned on this model with
                   patch_sdpa on diffusers' default backend (needs `model`): each attention
                   layer the plan names takes its layer's thresholds (the plan's options over
                   these ones, the error target off), others these options, one warning each.
    **options:     the keywords of sparge.attention (sim_threshold, cdf_threshold, topk,
                   pv_threshold, block_q, ...), checked here.
    """

    def __init__(self, model: Optional[torch.nn.Module] = None, *, grid=None,
                 text_position: str = "first", schedule: Optional[Schedule] = None,
                 min_seq_len: int = _patch.DEFAULT_MIN_SEQ_LEN, collect_stats: bool = False,
                 on_call=None, plan=None, **options):
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (the transformer) or None, got "
                            f"{type(model).__name__}")
        if text_position not in TEXT_POSITIONS:
            raise ValueError(f"text_position must be one of {TEXT_POSITIONS}, got "
                             f"{text_position!r}")
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a sparge.integrations.diffusers.Schedule or None, "
                            f"got {type(schedule).__name__}")
        if isinstance(min_seq_len, bool) or not isinstance(min_seq_len, int) or min_seq_len < 0:
            raise ValueError(f"min_seq_len must be an int >= 0, got {min_seq_len!r}")
        if not isinstance(collect_stats, bool):
            raise TypeError(f"collect_stats must be a bool, got {type(collect_stats).__name__}")
        for name in ("token_grid", "grid_offset"):
            if name in options:
                raise TypeError(f"{name} is not an option of the diffusers backend: pass "
                                "grid=(frames, height, width) (and text_position)")
        self.model = model
        self.grid = _check_grid(grid, model)
        self.text_position = text_position
        self.schedule = schedule
        self._router = _patch._Router(min_seq_len, options, collect_stats, on_call)
        self._route = None
        if plan is not None:
            if model is None:
                raise TypeError("plan needs the model it was tuned on: a plan's layers are "
                                "named after model.named_modules()")
            from ..tune_plan import PlanRoute, as_plan
            self._route = PlanRoute(as_plan(plan), options)
        self.layer_names: List[str] = []
        if model is not None:
            classes = _attention_classes()
            self.layer_names = [n for n, m in model.named_modules() if isinstance(m, classes)]
        if schedule is not None:
            self._check_dense_layers(schedule.dense_layers)
        self._counts: Dict[str, _patch.CallCounts] = {}
        self._layers: List[Tuple[int, str]] = []  # the attention modules being run (a stack)
        self._hooks = []
        self._forward_grid: Optional[Grid] = None
        self._warned = set()
        self._diffusers_context = []

    def _check_dense_layers(self, layers) -> None:
        if not layers:
            return
        if self.model is None:
            raise ValueError("Schedule(dense_layers=...) needs the model to know its layers: "
                             "pass the transformer as the backend's model")
        for layer in layers:
            if isinstance(layer, int) and layer >= len(self.layer_names):
                raise ValueError(f"dense_layers holds {layer}, but the model has "
                                 f"{len(self.layer_names)} attention layers (0 to "
                                 f"{len(self.layer_names) - 1})")
            if isinstance(layer, str) and not any(_name_matches(n, layer)
                                                  for n in self.layer_names):
                raise ValueError(f"dense_layers holds {layer!r}, which names no attention layer "
                                 f"of the model (e.g. {self.layer_names[:3]})")

    # ---- model hooks -------------------------------------------------------------------

    def attach(self) -> "SpargeBackend":
        """Installs the forward hooks that name the running layer (and read grid='auto')."""
        if self.model is None or self._hooks:
            return self
        modules = dict(self.model.named_modules())
        for index, name in enumerate(self.layer_names):
            module = modules[name]

            def enter(_module, _args, layer=(index, name)):
                self._layers.append(layer)

            def leave(_module, _args, _output):
                if self._layers:
                    self._layers.pop()

            self._hooks.append(module.register_forward_pre_hook(enter))
            self._hooks.append(module.register_forward_hook(leave, always_call=True))
        if self.grid == "auto":
            self._hooks.append(self.model.register_forward_pre_hook(self._read_grid,
                                                                    with_kwargs=True))
        return self

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._layers = []

    def _read_grid(self, model, args, kwargs):
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        self._forward_grid = model_grid(model, hidden_states)
        if self._forward_grid is None:
            shape = tuple(getattr(hidden_states, "shape", ()))
            self._warn_once(f"grid='auto' cannot read a patch grid from {type(model).__name__}'s "
                            f"input of shape {shape}: tokens stay in natural order; pass "
                            "grid=(frames, height, width)")

    # ---- context manager ---------------------------------------------------------------

    def __enter__(self) -> "SpargeBackend":
        _install()
        attached = not self._hooks
        self.attach()
        if self.schedule is not None:
            self.schedule.reset()
        context = _diffusers.attention_backend(BACKEND_NAME)
        context.__enter__()
        _ACTIVE.append(self)
        self._diffusers_context.append((context, attached))
        return self

    def __exit__(self, *exc):
        context, attached = self._diffusers_context.pop()
        _ACTIVE.remove(self)
        if attached:
            self.detach()
        context.__exit__(*exc)
        return False

    # ---- the call ----------------------------------------------------------------------

    def _attend(self, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        index, name = self._layers[-1] if self._layers else (None, UNKNOWN_LAYER)
        counts = self._counts.setdefault(name, _patch.CallCounts())
        if self.schedule is not None and self.schedule.is_dense(index, name):
            counts.dense_calls += 1
            if self._router.on_call is not None:
                self._router.on_call(_patch.CallInfo.of("sdpa", "dense by the schedule", query,
                                                        key, is_causal, "NHD"))
            return _patch.torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                     enable_gqa, layout="NHD")
        grid, offset = self._grid_for(query, key, is_causal)
        options = None
        if self._route is not None and isinstance(query, torch.Tensor) and query.dim() == 4 \
                and isinstance(key, torch.Tensor) and key.dim() == 4:
            # The plan reads heads and keys off [B, H, N, D] tensors: diffusers' are [B, N, H, D].
            options = self._route(None if name == UNKNOWN_LAYER else name,
                                  query.transpose(1, 2), key.transpose(1, 2))[0]
        # stacklevel 6: the warning points at the diffusers processor that dispatched the call.
        return self._router(query, key, value, attn_mask, dropout_p, is_causal, scale,
                            enable_gqa, layout="NHD", token_grid=grid, grid_offset=offset,
                            counts=counts, options=options, stacklevel=6)

    def _grid_for(self, query, key, is_causal) -> Tuple[Optional[Grid], int]:
        grid = self._forward_grid if self.grid == "auto" else self.grid
        if grid is None or is_causal or not isinstance(query, torch.Tensor) or \
                not isinstance(key, torch.Tensor) or query.dim() != 4 or key.dim() != 4:
            return None, 0
        tokens, grid_tokens = query.shape[1], math.prod(grid)
        if key.shape[1] != tokens:  # cross-attention (e.g. to text): natural order
            return None, 0
        if tokens < grid_tokens:
            self._warn_once(f"grid {grid} has {grid_tokens} tokens, but a self-attention call "
                            f"has {tokens}: it runs in natural order")
            return None, 0
        offset = tokens - grid_tokens if self.text_position == "first" else 0
        return grid, offset

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(f"sparge: {message}", stacklevel=3)

    # ---- statistics --------------------------------------------------------------------

    @property
    def stats(self) -> Dict[str, _patch.CallCounts]:
        """Per layer name (model order; UNKNOWN_LAYER for calls outside known layers): calls,
        sparge_calls, dense_calls, fallbacks {reason: count}, grid_calls, sparsity."""
        order = {name: i for i, name in enumerate(self.layer_names)}
        names = sorted(self._counts, key=lambda n: order.get(n, len(order)))
        return {n: _patch.CallCounts(**{**vars(self._counts[n]),
                                        "fallbacks": dict(self._counts[n].fallbacks)})
                for n in names}

    @property
    def total(self) -> _patch.CallCounts:
        """The counts of all layers added up."""
        total = _patch.CallCounts()
        for counts in self._counts.values():
            total.add(counts)
        return total

    def reset_stats(self) -> None:
        self._counts = {}

    def report(self) -> str:
        """A text table: one line per layer, then the total."""
        lines = [f"{'layer':<32} {'calls':>6} {'sparge':>6} {'dense':>6} {'fallbk':>6} "
                 f"{'grid':>5} {'sparsity':>8}"]
        rows = list(self.stats.items()) + [("total", self.total)]
        for name, c in rows:
            lines.append(f"{name:<32} {c.calls:>6} {c.sparge_calls:>6} {c.dense_calls:>6} "
                         f"{sum(c.fallbacks.values()):>6} {c.grid_calls:>5} "
                         f"{c.sparsity:>8.3f}")
        for reason, count in self.total.fallbacks.items():
            lines.append(f"fallback x{count}: {reason}")
        return "\n".join(lines)


_ACTIVE: List[SpargeBackend] = []  # the attention_backend blocks being run, innermost last
_default: Optional[SpargeBackend] = None  # the settings register() set


def current_backend() -> SpargeBackend:
    """The SpargeBackend serving "sparge" calls now: the innermost attention_backend block,
    else the one register() made (default settings if register() was never given any)."""
    global _default
    if _ACTIVE:
        return _ACTIVE[-1]
    if _default is None:
        _default = SpargeBackend()
    return _default


def register(model: Optional[torch.nn.Module] = None, **settings) -> SpargeBackend:
    """Makes "sparge" a diffusers attention backend and returns the SpargeBackend (settings
    as SpargeBackend's) that serves it outside any attention_backend block; its hooks on
    `model` stay until `detach()`. Then `model.set_attention_backend("sparge")` selects it."""
    global _default
    backend = SpargeBackend(model, **settings)
    _install()
    if _default is not None:
        _default.detach()
    _default = backend.attach()
    return backend


def attention_backend(model: Optional[torch.nn.Module] = None, **settings) -> SpargeBackend:
    """A context manager that runs diffusers' attention through Sparge inside the block:
    `with attention_backend(pipe.transformer, grid="auto") as run: pipe(...)`, then
    `run.stats` / `run.report()`. Settings as SpargeBackend's. Enters diffusers' own
    `attention_backend("sparge")`, so processors without a backend of their own (the default;
    not after `model.set_attention_backend("native")`) dispatch to Sparge."""
    return SpargeBackend(model, **settings)
