"""The result of `sparge.tune`: fixed per-layer, per-head thresholds, and their JSON file.

    plan = sparge.TunePlan.load("plan.json")
    with sparge.patch_sdpa(plan=plan, model=model):
        model(**batch)

The file (docs/python.md, "Tuning"):

    {"format": "sparge-tune-plan", "version": 1,
     "target_error": 0.05,
     "options": {"estimate": "sampled_rows", "sample_rows": 16, ...},
     "layers": {"blocks.0.attn": {"cdf_threshold": [0.93, 0.99], "pv_threshold": 50.0,
                                  "calls": 2, "error_estimate": [0.031, 0.044],
                                  "sparsity": 0.61}, ...},
     "fallbacks": {"blocks.1.attn": {"<reason>": 1}}}

`options` are the sparge.attention keywords every planned call takes (those given to the tuner,
plus the estimate the error target implies); a layer adds its per-head TopCdf masses and λ.
Non-finite numbers are written as JSON allows: λ = inf as the string "inf", an error estimate
that is not finite (NaN inputs) as null.
"""
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import torch

FORMAT = "sparge-tune-plan"
VERSION = 1

# Options a plan may not carry: the layer's own thresholds, and the mode they replace.
_LAYER_OWNED = ("cdf_threshold", "topk", "target_error", "pv_threshold")


def min_pv_threshold(target_error: float, seq_k: int) -> float:
    """The λ floor of the error-target mode (src/common/error_target.h,
    error_target_min_pv_threshold): log2(seq_k / target) + 10, so the λ skip drops less than
    target / 1024 of a row's mass. The target is read as the float32 the C++ options hold."""
    target = torch.tensor(target_error, dtype=torch.float32).item()
    return math.log2(seq_k / target) + 10.0


@dataclass
class LayerPlan:
    """One layer's tuned thresholds and what the calibration calls measured there."""
    cdf_threshold: List[float]  # per query head: the largest TopCdf mass chosen over the calls
    pv_threshold: float  # λ: the largest the error-target mode used over the calls
    calls: int  # calibration calls Sparge served in this layer
    error_estimate: List[Optional[float]]  # per head: the worst estimate (None: not finite)
    sparsity: float  # mean fraction of tiles skipped over the calls

    @property
    def heads(self) -> int:
        return len(self.cdf_threshold)


@dataclass
class TunePlan:
    """Fixed thresholds per layer (keyed by `model.named_modules()` names) that reproduce, or
    keep more than, what `target_error` chose on the calibration calls."""
    target_error: float
    options: Dict[str, object]
    layers: Dict[str, LayerPlan]
    fallbacks: Dict[str, Dict[str, int]] = field(default_factory=dict)

    def layer_options(self, layer: str, heads_q: int, seq_k: int) -> Dict[str, object]:
        """The sparge.attention keywords of a call made in `layer` with `heads_q` query heads
        and `seq_k` keys: the plan's options, the layer's per-head TopCdf masses, the error
        target off, and λ at least the floor the target sets for this many keys."""
        plan = self.layers[layer]
        if heads_q != plan.heads:
            raise ValueError(f"layer {layer!r}: the call has {heads_q} query heads but the plan's "
                             f"cdf_threshold has {plan.heads} (a plan tuned for another model?)")
        pv = max(plan.pv_threshold, min_pv_threshold(self.target_error, seq_k))
        return dict(self.options, cdf_threshold=list(plan.cdf_threshold), pv_threshold=pv,
                    target_error=0.0)

    def to_json(self) -> dict:
        layers = {name: dict(cdf_threshold=list(p.cdf_threshold),
                             pv_threshold=_number_out(p.pv_threshold), calls=p.calls,
                             error_estimate=list(p.error_estimate), sparsity=p.sparsity)
                  for name, p in self.layers.items()}
        return {"format": FORMAT, "version": VERSION, "target_error": self.target_error,
                "options": dict(self.options), "layers": layers,
                "fallbacks": {name: dict(r) for name, r in self.fallbacks.items()}}

    @classmethod
    def from_json(cls, data) -> "TunePlan":
        """The plan a parsed file describes; ValueError naming the field when it is not one."""
        if not isinstance(data, dict):
            raise ValueError(f"a tune plan must be a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ValueError(f"format must be {FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != VERSION:
            raise ValueError(f"version must be {VERSION} (the version this sparge reads), got "
                             f"{data.get('version')!r}")
        target = _number(_field(data, "target_error", ""), "target_error")
        if not 0.0 < target < 1.0:
            raise ValueError(f"target_error must be in (0, 1), got {target}")
        options = _options_in(_dict(_field(data, "options", ""), "options"))
        layers = {name: _layer_in(_dict(value, f"layers[{name!r}]"), f"layers[{name!r}]")
                  for name, value in _dict(_field(data, "layers", ""), "layers").items()}
        fallbacks = {}
        for name, reasons in _dict(data.get("fallbacks", {}), "fallbacks").items():
            where = f"fallbacks[{name!r}]"
            fallbacks[name] = {reason: _count(n, f"{where}[{reason!r}]", minimum=1)
                               for reason, n in _dict(reasons, where).items()}
        return cls(target, options, layers, fallbacks)

    def save(self, path: Union[str, os.PathLike]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=1, allow_nan=False)
            f.write("\n")

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "TunePlan":
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{os.fspath(path)} is not JSON: {e}") from None
        return cls.from_json(data)


class PlanRoute:
    """patch_sdpa(plan=...)'s choice per call: in a planned layer the plan's options over the
    patch's own (`options`), elsewhere the patch's own, with one warning per such layer."""

    def __init__(self, plan: TunePlan, options: Dict[str, object]):
        self.plan = plan
        self._own = {n: v for n, v in options.items() if n not in _LAYER_OWNED}
        self._unplanned = set()

    def __call__(self, layer: Optional[str], query, key):
        """(options or None for the patch's own, None: the patch's counts) of one call."""
        if layer in self.plan.layers:
            if not all(isinstance(t, torch.Tensor) and t.dim() in (3, 4) for t in (query, key)):
                return None, None  # the router falls back (or lets PyTorch raise its error)
            heads_q = query.shape[1] if query.dim() == 4 else 1
            return dict(self._own, **self.plan.layer_options(layer, heads_q, key.shape[-2])), None
        if layer not in self._unplanned:
            self._unplanned.add(layer)
            where = "outside the model's modules" if layer is None else f"in layer {layer!r}"
            warnings.warn(f"sparge: an attention call {where} is not in the tune plan; it uses "
                          "patch_sdpa's own options", UserWarning, stacklevel=3)
        return None, None


def as_plan(plan) -> TunePlan:
    """A TunePlan, or the plan saved at a path."""
    if isinstance(plan, TunePlan):
        return plan
    if isinstance(plan, (str, os.PathLike)):
        return TunePlan.load(plan)
    raise TypeError(f"plan must be a sparge.TunePlan or the path of its JSON file, got "
                    f"{type(plan).__name__}")


def json_value(value):
    """An option's value as a plan holds it: a tensor becomes a list (tuples stay: json writes
    them as lists, and loading makes token_grid a tuple again)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    return value


def _number_out(x: float):
    return "inf" if x == math.inf else x


def _field(data: dict, name: str, where: str):
    if name not in data:
        raise ValueError(f"{where + '.' if where else ''}{name} is missing")
    return data[name]


def _dict(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _number(value, where: str, allow_inf: bool = False) -> float:
    if allow_inf and value == "inf":
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        also = ' or "inf"' if allow_inf else ""
        raise ValueError(f"{where} must be a finite number{also}, got {value!r}")
    return float(value)


def _count(value, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _layer_in(data: dict, where: str) -> LayerPlan:
    thresholds = _field(data, "cdf_threshold", where)
    if not isinstance(thresholds, list) or not thresholds:
        raise ValueError(f"{where}.cdf_threshold must be a non-empty list (one TopCdf mass per "
                         f"query head), got {thresholds!r}")
    cdf = []
    for h, value in enumerate(thresholds):
        x = _number(value, f"{where}.cdf_threshold[{h}]")
        if not 0.0 < x <= 1.0:
            raise ValueError(f"{where}.cdf_threshold[{h}] must be in (0, 1], got {x}")
        cdf.append(x)
    pv = _number(_field(data, "pv_threshold", where), f"{where}.pv_threshold", allow_inf=True)
    if pv < 0:
        raise ValueError(f"{where}.pv_threshold must be >= 0, got {pv}")
    calls = _count(_field(data, "calls", where), f"{where}.calls", minimum=1)
    estimates = _field(data, "error_estimate", where)
    if not isinstance(estimates, list) or len(estimates) != len(cdf):
        raise ValueError(f"{where}.error_estimate must be a list of {len(cdf)} numbers or nulls "
                         f"(one per query head), got {estimates!r}")
    errors = [None if e is None else _number(e, f"{where}.error_estimate[{h}]")
              for h, e in enumerate(estimates)]
    sparsity = _number(_field(data, "sparsity", where), f"{where}.sparsity")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"{where}.sparsity must be in [0, 1], got {sparsity}")
    return LayerPlan(cdf, pv, calls, errors, sparsity)


def _options_in(options: dict) -> Dict[str, object]:
    """The plan's options, checked as patch_sdpa checks its own (names and values)."""
    from . import patch  # patch imports this module when it is given a plan

    for name in _LAYER_OWNED:
        if name in options:
            raise ValueError(f"options.{name} must not be given: each layer sets its own "
                             "cdf_threshold and pv_threshold, and the error target is off")
    unknown = sorted(set(options) - patch._ATTENTION_OPTIONS)
    if unknown:
        raise ValueError(f"options.{unknown[0]} is not an option of sparge.attention")
    if options.get("estimate") != "sampled_rows":
        raise ValueError(f"options.estimate must be 'sampled_rows' (the estimate the error "
                         f"target tuned with), got {options.get('estimate')!r}")
    options = dict(options)
    if isinstance(options.get("token_grid"), list):
        options["token_grid"] = tuple(options["token_grid"])
    try:
        patch._check_early(options)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"options: {e}") from None
    return options
