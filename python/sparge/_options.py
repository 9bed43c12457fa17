"""Turns the Python keyword arguments into the packed options of the sparge ops.

The order of `scalars` and `flags` mirrors the enums at the top of python/csrc/binding.cc.
Range checks (thresholds, block sizes) are left to the C++ validation, whose messages name the
argument; this module only checks what the C++ side cannot see (Python types, lengths).
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch

Threshold = Union[float, int, Sequence[float], torch.Tensor]

BACKENDS = {"auto": 0, "reference": 1, "cpu": 2, "cuda": 3}
CAUSAL_ALIGNS = ("top_left", "bottom_right")
LAYOUTS = ("HND", "NHD")

# Defaults of sparge::SparseOptions (include/sparge/types.h).
DEFAULT_SIM_THRESHOLD = 0.6
DEFAULT_CDF_THRESHOLD = 0.98
DEFAULT_PV_THRESHOLD = 50.0
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 64

# flags[] positions (binding.cc: enum Flag)
WITH_EXTRAS = 8
BLOCK_Q, BLOCK_K = 4, 5


@dataclass(frozen=True)
class PackedOptions:
    scalars: List[float]
    flags: List[int]
    per_head: List[Optional[torch.Tensor]]


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


def pack(*, heads_q: int, scale: float, is_causal: bool, causal_align: str,
         sim_threshold: Threshold, cdf_threshold: Optional[Threshold],
         topk: Optional[Threshold], pv_threshold: Threshold, attention_sink: bool,
         block_q: int, block_k: int, quantized: bool, backend: str,
         with_extras: bool) -> PackedOptions:
    check_choice(causal_align, CAUSAL_ALIGNS, "causal_align")
    check_choice(backend, tuple(BACKENDS), "backend")
    if cdf_threshold is not None and topk is not None:
        raise ValueError("give cdf_threshold or topk, not both (got both)")
    for name, flag in (("is_causal", is_causal), ("attention_sink", attention_sink),
                       ("quantized", quantized)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    for name, block in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(block, bool) or not isinstance(block, int):
            raise TypeError(f"{name} must be an int, got {type(block).__name__}")
    use_topk = topk is not None
    keep_name = "topk" if use_topk else "cdf_threshold"
    keep = topk if use_topk else (DEFAULT_CDF_THRESHOLD if cdf_threshold is None else cdf_threshold)
    sim, sim_ph = head_threshold(sim_threshold, heads_q, "sim_threshold")
    kept, keep_ph = head_threshold(keep, heads_q, keep_name)
    pv, pv_ph = head_threshold(pv_threshold, heads_q, "pv_threshold")
    flags = [int(is_causal), int(causal_align == "bottom_right"), int(use_topk),
             int(attention_sink), block_q, block_k, int(quantized), BACKENDS[backend],
             int(with_extras)]
    return PackedOptions([scale, sim, kept, pv], flags, [sim_ph, keep_ph, pv_ph])
