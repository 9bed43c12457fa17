"""The options of the sparge ops as Python sees them.

Names, kinds, defaults and enum names are read at import from the C++ option list
(include/sparge/option_list.h, through `_C.option_table()`), which also generates the ops'
schemas: one keyword argument per option. This module adds only the Python keyword sugar on
top: `is_causal` (SDPA's name for `causal`), `cdf_threshold` / `topk` (the selection mode and
its value), `quantized` (the quant mode: a bool or the mode's name) and per-head values given
as tensors. Range checks are
the C++ validation's, whose messages name the argument; here only Python types are checked.
"""
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from . import _C

Threshold = Union[float, int, Sequence[float], torch.Tensor]

#: One dict per option: name, kind ("float", "bool", "int", "enum", "head"), default, choices, doc.
TABLE: Dict[str, dict] = {o["name"]: o for o in _C.option_table()}
BACKENDS: Tuple[str, ...] = tuple(_C.backend_names())
LAYOUTS = ("HND", "NHD")


def _python_default(option: dict):
    kind, value = option["kind"], option["default"]
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(value)
    if kind == "enum":
        return option["choices"][int(value)]
    return float(value)


#: The defaults of sparge::SparseOptions{} in Python types (enums by name).
DEFAULTS: Dict[str, object] = {name: _python_default(o) for name, o in TABLE.items()}

CAUSAL_ALIGNS: Tuple[str, ...] = tuple(TABLE["causal_align"]["choices"])

#: The keyword that selects each selection mode (`select`) and gives its value (`select_value`).
SELECT_KEYWORDS = {"topcdf": "cdf_threshold", "topk": "topk"}


def head_threshold(value: Threshold, heads_q: int,
                   name: str) -> Tuple[float, Optional[torch.Tensor]]:
    """A float for every head, or a float32 cpu tensor with one value per query head."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a float or a 1-D tensor of length {heads_q}, got bool")
    if isinstance(value, (float, int)):
        return float(value), None
    if isinstance(value, (list, tuple)):
        value = torch.tensor(value, dtype=torch.float32)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a float or a 1-D tensor of length {heads_q}, "
                        f"got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} tensor must have a floating dtype, got {value.dtype}")
    if value.dim() != 1 or value.shape[0] != heads_q:
        raise ValueError(f"{name} must be a float or a 1-D tensor of length {heads_q} "
                         f"(query heads), got shape {tuple(value.shape)}")
    # Read on the host by the C++ validation and Stage 1 (a copy from cuda synchronizes).
    return 0.0, value.detach().to(device="cpu", dtype=torch.float32).contiguous()


def check_choice(value, choices, name):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def resolve_scale(scale: Optional[float], head_dim: int) -> float:
    """The caller's scale, or 1/sqrt(head_dim) of the caller's (unpadded) head dim."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (float, int)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0 (None = 1/sqrt(head_dim)), got {scale}")
    return float(scale)


QUANT_MODES: Tuple[str, ...] = tuple(TABLE["quant"]["choices"])


def quant_mode(quantized: Union[bool, str]) -> str:
    """The quant option of `quantized`: False is "none", True "int8_fp8" (INT8 Q·Kᵀ, FP8 P·V),
    or a mode's name ("none", "int8_fp8", "int8": INT8 Q·Kᵀ with P·V at the inputs' type)."""
    if isinstance(quantized, bool):
        return "int8_fp8" if quantized else "none"
    if not isinstance(quantized, str):
        raise TypeError(f"quantized must be a bool or one of {', '.join(map(repr, QUANT_MODES))}, "
                        f"got {type(quantized).__name__}")
    check_choice(quantized, QUANT_MODES, "quantized")
    return quantized


def _check_types(bools: Dict[str, object], ints: Dict[str, object]):
    for name, value in bools.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    for name, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")


def op_options(*, heads_q: int, scale: float, is_causal: bool, causal_align: str,
               sim_threshold: Threshold, cdf_threshold: Optional[Threshold],
               topk: Optional[Threshold], pv_threshold: Threshold, attention_sink: bool,
               block_q: int, block_k: int, quantized: Union[bool, str], backend: str,
               estimate: str = DEFAULTS["estimate"],
               sample_rows: int = DEFAULTS["sample_rows"],
               window_left: int = DEFAULTS["window_left"],
               window_right: int = DEFAULTS["window_right"],
               target_error: float = DEFAULTS["target_error"]) -> Dict[str, object]:
    """The keyword arguments of the sparge ops (one per option, per-head ones as a float and a
    `<name>_per_head` tensor or None), from the keywords of sparge.attention."""
    _check_types(dict(is_causal=is_causal, attention_sink=attention_sink),
                 dict(block_q=block_q, block_k=block_k, sample_rows=sample_rows,
                      window_left=window_left, window_right=window_right))
    if cdf_threshold is not None and topk is not None:
        raise ValueError("give cdf_threshold or topk, not both (got both)")
    select = "topk" if topk is not None else "topcdf"
    select_value = topk if topk is not None else cdf_threshold
    if select_value is None:
        select, select_value = DEFAULTS["select"], DEFAULTS["select_value"]
    options = dict(scale=scale, causal=is_causal, causal_align=causal_align, select=select,
                   estimate=estimate, sample_rows=sample_rows,
                   attention_sink=attention_sink, block_q=block_q, block_k=block_k,
                   quant=quant_mode(quantized), backend=backend,
                   window_left=window_left, window_right=window_right)
    if isinstance(target_error, bool) or not isinstance(target_error, (int, float)):
        raise TypeError(f"target_error must be a float, got {type(target_error).__name__}")
    options["target_error"] = float(target_error)
    for name, value, keyword in (("sim_threshold", sim_threshold, "sim_threshold"),
                                 ("select_value", select_value, SELECT_KEYWORDS[select]),
                                 ("pv_threshold", pv_threshold, "pv_threshold")):
        options[name], options[name + "_per_head"] = head_threshold(value, heads_q, keyword)
    return options


def check_options(options: Dict[str, object]) -> None:
    """The C++ option checks, before any tensor exists (per-head tensors fix heads_q)."""
    heads_q = next((t.shape[0] for n, t in options.items()
                    if n.endswith("_per_head") and t is not None), 1)
    torch.ops.sparge.check_options(heads_q, **options)
