"""Accuracy sweeps: sparsity against relative L1 and cosine similarity versus full attention.

For every workload: a grid of Sparge thresholds (TopCdf, TopK, the self-similarity threshold,
λ and, for causal heads, the attention sink), on the exact path and on the quantized one where
the backend has it, in the tokens' own order and — for grid workloads — in Hilbert order; and
the naive baselines (local window, random blocks) at fixed sparsities in the same orders.
"""
import math
from dataclasses import dataclass
from typing import List, Optional

import torch

import sparge
from sparge.measure import errors

import baselines
from calibration import block_mass
from reference import reference_attention

INF = math.inf
BASELINE_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


@dataclass
class Setting:
    label: str
    family: str     # dense, cdf, topk, lambda, sink
    options: dict   # keyword arguments of sparge.attention


def _label(options: dict) -> str:
    parts = []
    if options.get("attention_sink"):
        parts.append("sink")
    if "cdf_threshold" in options:
        parts.append(f"cdf {options['cdf_threshold']:g}")
    if "topk" in options:
        parts.append(f"topk {options['topk']:g}")
    parts.append(f"sim {options['sim_threshold']:g}")
    if options["pv_threshold"] != INF:
        parts.append(f"λ {options['pv_threshold']:g}")
    return ", ".join(parts)


def _setting(family, **options) -> Setting:
    options.setdefault("pv_threshold", INF)
    if family == "dense":
        return Setting("nothing skipped", family, dict(sim_threshold=1.0, pv_threshold=INF))
    return Setting(_label(options), family, options)


def settings(causal: bool, small: bool = False) -> List[Setting]:
    """The threshold grid. sim_threshold -0.1 (the official top-k API's default) judges every
    block self-similar, so the selection alone decides; 0.6 is Sparge's default."""
    cdfs = (0.5, 0.8, 0.9, 0.95, 0.98, 0.995) if small else \
        (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
    sims = (-0.1, 0.6) if small else (-0.1, 0.3, 0.6)
    topks = (0.05, 0.1, 0.2, 0.4) if small else (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
    lambdas = (10.0, 5.0) if small else (16.0, 10.0, 6.0, 3.0)
    sink_cdfs = (0.9, 0.98, 0.995, 0.999) if small else \
        (0.7, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
    grid = [_setting("dense")]
    grid += [_setting("cdf", cdf_threshold=c, sim_threshold=s) for s in sims for c in cdfs]
    grid += [_setting("topk", topk=t, sim_threshold=s) for s in (sims[0], sims[-1])
             for t in topks]
    for lam in lambdas:  # λ alone (every tile kept), and on top of a mid setting
        grid.append(_setting("lambda", sim_threshold=1.0, pv_threshold=lam))
        grid.append(_setting("lambda", cdf_threshold=0.95, sim_threshold=-0.1,
                             pv_threshold=lam))
    if causal:
        grid += [_setting("sink", cdf_threshold=c, sim_threshold=-0.1, attention_sink=True)
                 for c in sink_cdfs]
        grid += [_setting("sink", topk=t, sim_threshold=-0.1, attention_sink=True)
                 for t in (0.3, 0.5)]
    return grid


def hilbert_gather(grid, tokens: int, device) -> torch.Tensor:
    """Gather index putting a (T, H, W) grid's tokens (all of them) in Hilbert order."""
    if grid[0] * grid[1] * grid[2] != tokens:
        raise ValueError(f"grid {grid} does not cover the {tokens} tokens")
    return torch.ops.sparge.hilbert_order(grid[0], grid[1], grid[2], torch.device(device))


class Case:
    """One workload on the device: inputs in the run dtype, the reference in the original
    token order, and the same in Hilbert order for the baselines and Stage-2 timings."""

    def __init__(self, spec, workload, device: str, dtype):
        self.spec, self.device, self.dtype = spec, device, dtype
        self.name = spec.name
        self.causal = workload.causal
        self.grid = workload.grid
        self.shape = workload.shape
        self.q, self.k, self.v = (t.to(device=device, dtype=dtype) for t in
                                  (workload.q, workload.k, workload.v))
        self.ref = reference_attention(self.q, self.k, self.v, causal=self.causal)
        self._ordered, self._mass = {}, {}

    @property
    def orders(self):
        return ("hilbert", "original") if self.grid else ("original",)

    def token_grid(self, order: str):
        return self.grid if order == "hilbert" else None

    def ordered(self, order: str):
        """(q, k, v, ref) with the tokens in `order` (errors do not depend on the order)."""
        if order == "original":
            return self.q, self.k, self.v, self.ref
        if order not in self._ordered:
            gather = hilbert_gather(self.grid, self.q.shape[2], self.device)
            self._ordered[order] = tuple(t.index_select(2, gather) for t in
                                         (self.q, self.k, self.v, self.ref))
        return self._ordered[order]

    def block_mass(self, order: str):
        """The true attention mass of every 128×64 tile [B, Hq, nq, nk] with the tokens in
        `order` (calibration.block_mass), made once per order."""
        if order not in self._mass:
            q, k, _, _ = self.ordered(order)
            self._mass[order] = block_mass(q, k, causal=self.causal)
        return self._mass[order]

    def record_fields(self, workload_kind: str) -> dict:
        dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        return dict(workload=workload_kind, case=self.name, dtype=dtype[self.dtype],
                    **self.shape, causal=self.causal,
                    token_grid=list(self.grid) if self.grid else None)


def call_sparge(case: Case, options: dict, order: str, quantized: bool = False):
    """sparge.attention on the case: (output in the tokens' own order, SparseStats, whose mask
    is in the order it ran)."""
    return sparge.attention(case.q, case.k, case.v, is_causal=case.causal,
                            token_grid=case.token_grid(order), quantized=quantized,
                            return_stats=True, **options)


def run_sparge(case: Case, options: dict, order: str, quantized: bool):
    """sparge.attention on the case; returns (metrics, block mask in the order it ran)."""
    out, stats = call_sparge(case, options, order, quantized)
    metrics = dict(sparsity=stats.sparsity, pv_skip_fraction=stats.pv_skip_fraction,
                   **errors(out, case.ref))
    return metrics, stats.block_mask


def baseline_mask(case: Case, kind: str, sparsity: float):
    s = case.shape
    build = baselines.window_mask if kind == "window" else baselines.random_mask
    return build(s["batch"], s["heads_q"], s["seq_q"], s["seq_k"], sparsity, causal=case.causal,
                 device=case.device)


def run_baseline(case: Case, kind: str, sparsity: float, order: str) -> dict:
    q, k, v, ref = case.ordered(order)
    mask = baseline_mask(case, kind, sparsity)
    out = sparge.block_sparse_attention(q, k, v, mask, pv_threshold=INF)
    return dict(sparsity=mask.sparsity, target_sparsity=sparsity, **errors(out, ref))


def quantized_support(device: str, dtype) -> Optional[str]:
    """None when the backend runs quantized=True, else the reason it refused."""
    x = torch.randn((1, 1, 256, 64), generator=torch.Generator().manual_seed(0))
    x = x.to(device=device, dtype=dtype)
    try:
        sparge.attention(x, x, x, quantized=True)
    except (NotImplementedError, ValueError, TypeError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


def sweep(case: Case, rec, budget, *, small: bool, quantized_ok: bool, reserve: float = 0.0):
    """Every Sparge setting and baseline on one case, as accuracy records; returns them."""
    fields = case.record_fields(case.spec.kind)
    paths = [("sparge-exact", False)] + ([("sparge-quant", True)] if quantized_ok else [])
    out = []
    for impl, quantized in paths:
        for order in case.orders:
            for setting in settings(case.causal, small):
                if budget.expired(reserve):
                    rec.note(f"{case.name}: time budget reached, {impl} {order} sweep cut short")
                    return out
                metrics, _ = run_sparge(case, setting.options, order, quantized)
                out.append(rec.emit(section="accuracy", impl=impl, order=order,
                                    setting=setting.label, family=setting.family,
                                    options=setting.options, ms=None, tops=None,
                                    **fields, **metrics))
    for order in case.orders:
        for kind in ("window", "random"):
            for target in BASELINE_SPARSITIES:
                if budget.expired(reserve):
                    rec.note(f"{case.name}: time budget reached, baselines cut short")
                    return out
                metrics = run_baseline(case, kind, target, order)
                out.append(rec.emit(section="accuracy", impl=f"baseline-{kind}", order=order,
                                    setting=f"{kind} s={target:g}", family="baseline",
                                    options=None, ms=None, tops=None, **fields, **metrics))
    return out
