"""sparge.tune: fixed per-layer, per-head thresholds for a model, from a few calibration calls.

    plan = sparge.tune(model, lambda: model(**batch), target_error=0.05, path="plan.json")
    with sparge.patch_sdpa(plan="plan.json", model=model):
        model(**other_batch)

While `run` runs, every SDPA call is served by sparge.attention with the error target on (per
call and head, the sparsest of 32 TopCdf masses, all read from one Stage-1 sorted map, whose
estimated relative L1 error is within the target; docs/method.md, "The error target") and filed
under the innermost running module of `model`. Per layer and query head the plan keeps the
largest mass chosen over the calls, so that on the calibration calls every head keeps at least
what the error target kept; a planned call then needs no error estimate, only the sampled rows.
"""
import math
import sys
import warnings
from typing import Callable, Dict, Optional

import torch

from ._options import DEFAULTS
from .ops import SparseStats
from .patch import DEFAULT_MIN_SEQ_LEN, CallCounts, patch_sdpa
from .tune_plan import LayerPlan, TunePlan, json_value, min_pv_threshold

# What the error target replaces (cdf_threshold, topk) or sets itself (target_error).
_CHOSEN_BY_THE_TUNER = ("cdf_threshold", "topk", "target_error")


class _Layer:
    """What the calibration calls of one layer chose, added up call by call."""

    def __init__(self, heads_q: int):
        self.cdf = torch.zeros(heads_q)  # the largest TopCdf mass per head
        self.error = torch.zeros(heads_q, dtype=torch.float64)  # the worst estimate per head
        self.pv = 0.0
        self.calls = 0
        self.sparsity_sum = 0.0

    def plan(self) -> LayerPlan:
        errors = [e if math.isfinite(e) else None for e in self.error.tolist()]
        return LayerPlan(self.cdf.tolist(), self.pv, self.calls, errors,
                         self.sparsity_sum / self.calls)


class _Capture:
    """The tuner's side of patch_sdpa: the counts of each layer (its `route`) and the stats of
    each Sparge call (its `add`, the router's stats listener)."""

    def __init__(self, target_error: float, pv_threshold, progress: bool):
        self.target_error = target_error
        self.pv_user = float(torch.as_tensor(pv_threshold, dtype=torch.float64).max())
        self.progress = progress
        self.counts: Dict[Optional[str], CallCounts] = {}
        self.layers: Dict[str, _Layer] = {}
        self.calls = 0
        self._layer: Optional[str] = None  # the layer of the call in flight

    def route(self, layer: Optional[str], query, key):
        self._layer = layer
        return None, self.counts.setdefault(layer, CallCounts())

    def add(self, stats: SparseStats) -> None:
        self.calls += 1
        name = self._layer
        if name is None:  # called outside the model: no layer to plan for
            self._report(f"call {self.calls} outside the model's modules (not planned)")
            return
        heads_q = stats.select_value.shape[1]
        layer = self.layers.setdefault(name, _Layer(heads_q))
        if layer.cdf.shape[0] != heads_q:
            raise ValueError(f"layer {name!r} made attention calls with {layer.cdf.shape[0]} "
                             f"and {heads_q} query heads; a plan holds one threshold per head")
        chosen = stats.select_value.detach().float().cpu().amax(dim=0)  # over the batch
        layer.cdf = torch.maximum(layer.cdf, chosen)
        # A NaN estimate (NaN inputs; the head kept every tile) counts as the worst.
        errors = stats.error_estimate.detach().double().cpu().nan_to_num(nan=math.inf)
        layer.error = torch.maximum(layer.error, errors.amax(dim=0))
        # The λ the error-target mode ran with (src/common/dispatch.cc): raised to the floor.
        floor = min_pv_threshold(self.target_error, stats.block_mask.seq_k)
        layer.pv = max(layer.pv, self.pv_user, floor)
        layer.calls += 1
        sparsity = stats.sparsity
        layer.sparsity_sum += sparsity
        self._report(f"call {self.calls}: {name or '(the model)'} #{layer.calls}, sparsity "
                     f"{sparsity:.3f}, TopCdf {chosen.min():.4g}..{chosen.max():.4g}")

    def _report(self, line: str) -> None:
        if self.progress:
            print(f"sparge tune: {line}", file=sys.stderr, flush=True)

    def plan(self, options: Dict[str, object]) -> TunePlan:
        fallbacks = {name: dict(c.fallbacks) for name, c in self.counts.items()
                     if name is not None and c.fallbacks}
        layers = {name: layer.plan() for name, layer in self.layers.items()}
        return TunePlan(self.target_error, options, layers, fallbacks)


def _plan_options(options: Dict[str, object]) -> Dict[str, object]:
    """The options a planned call takes: the tuner's (but λ, which is per layer) and the
    estimate the error target implied (src/common/dispatch.cc: sampled_rows, at least 16 rows
    per query block, at most block_q)."""
    block_q = options.get("block_q", DEFAULTS["block_q"])
    sample_rows = max(options.get("sample_rows", DEFAULTS["sample_rows"]), min(16, block_q))
    kept = {n: json_value(v) for n, v in options.items() if n != "pv_threshold"}
    return dict(kept, estimate="sampled_rows", sample_rows=sample_rows)


def tune(model: torch.nn.Module, run: Callable[[], object], *, target_error: float = 0.05,
         path=None, progress: bool = True, min_seq_len: int = DEFAULT_MIN_SEQ_LEN,
         **options) -> TunePlan:
    """Runs `run()` once (the calibration, e.g. `lambda: model(**batch)`) under torch.no_grad
    with every SDPA call served by Sparge's error target, and returns the plan: per layer of
    `model` (its `named_modules()` name) and query head the largest TopCdf mass chosen over
    the calls, the worst estimated error, the number of calls and their mean sparsity. Calls
    Sparge cannot serve run PyTorch's SDPA (with the warnings of patch_sdpa) and are counted
    in `plan.fallbacks` per layer. `path`: also save the plan there (TunePlan.save).
    `progress`: one line per call on stderr. Other keyword arguments are sparge.attention's
    (sim_threshold, block sizes, backend, ...), as for patch_sdpa; is_causal comes from each
    call; the plan keeps them.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(run):
        raise TypeError(f"run must be a callable that runs the calibration (e.g. "
                        f"lambda: model(**batch)), got {type(run).__name__}")
    if isinstance(target_error, bool) or not isinstance(target_error, (int, float)):
        raise TypeError(f"target_error must be a float, got {type(target_error).__name__}")
    if not 0.0 < target_error < 1.0:
        raise ValueError(f"target_error must be in (0, 1), got {target_error}")
    for name in _CHOSEN_BY_THE_TUNER:
        if name in options:
            raise TypeError(f"{name} cannot be given to sparge.tune: the tuner chooses a TopCdf "
                            "mass per layer and head for target_error")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
    capture = _Capture(float(target_error), options.get("pv_threshold", DEFAULTS["pv_threshold"]),
                       progress)
    patch = patch_sdpa(min_seq_len=min_seq_len, collect_stats=True,
                       target_error=float(target_error), **options)
    patch._model, patch._route = model, capture.route  # attribute each call to its layer
    patch._router.stats_listener = capture.add
    with torch.no_grad(), patch:
        run()
    plan = capture.plan(_plan_options(options))
    if not plan.layers:
        warnings.warn("sparge.tune: Sparge served no attention call of the model during run() "
                      "(none made, or every one fell back: see plan.fallbacks); the plan is empty",
                      UserWarning, stacklevel=2)
    if path is not None:
        plan.save(path)
    return plan
