"""The error, rate and time measures of every Sparge test and benchmark, defined once.

These are the `rel_l1`, `cos_sim`, `tops` and `ms` fields of docs/bench-schema.md; the C++ tests,
command line and CPU benchmarks use the same definitions (src/workloads/measure.h):

    rel_l1 = ||out - ref||_1 / ||ref||_1           (float64 sums; ||out - ref||_1 when ref is 0)
    cos_sim = out . ref / (||out||_2 ||ref||_2)     (float64; 1 when both are 0, 0 when one is)
    tops = 4 B Hq Nq Nk D / time / 10^12            (dense-equivalent; halved when causal)
    ms = median of timed calls after warm-up        (CUDA events on cuda, perf_counter on the cpu)

A NaN or Inf anywhere in `out` makes rel_l1 +inf and cos_sim NaN, so a broken output never passes
an error bound; a NaN or Inf in `ref` makes both NaN. Needs only torch (no GPU, no extension):

    from sparge import measure
    err = measure.rel_l1(out, ref); ms = measure.time_ms(lambda: f(x), warmup=3, reps=10)
"""
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import torch

__all__ = ["ErrorSums", "error_sums", "rel_l1", "cosine", "errors", "dense_tops", "time_ms"]


@dataclass(frozen=True)
class ErrorSums:
    """The float64 sums behind rel_l1 and cos_sim. Sums of several pairs (`a + b`) give the pooled
    relative L1 of all of them, as if their elements were concatenated."""

    l1_diff: float = 0.0   # sum |out - ref|
    l1_ref: float = 0.0    # sum |ref|
    dot: float = 0.0       # sum out * ref
    sq_out: float = 0.0    # sum out^2
    sq_ref: float = 0.0    # sum ref^2
    out_finite: bool = True
    ref_finite: bool = True

    def __add__(self, other: "ErrorSums") -> "ErrorSums":
        return ErrorSums(self.l1_diff + other.l1_diff, self.l1_ref + other.l1_ref,
                         self.dot + other.dot, self.sq_out + other.sq_out,
                         self.sq_ref + other.sq_ref, self.out_finite and other.out_finite,
                         self.ref_finite and other.ref_finite)

    @property
    def rel_l1(self) -> float:
        if not self.out_finite:
            return math.inf
        if not self.ref_finite:
            return math.nan
        return self.l1_diff / self.l1_ref if self.l1_ref > 0 else self.l1_diff

    @property
    def cos_sim(self) -> float:
        if not (self.out_finite and self.ref_finite):
            return math.nan
        if self.sq_out > 0 and self.sq_ref > 0:
            return self.dot / math.sqrt(self.sq_out * self.sq_ref)
        return 1.0 if self.sq_out == self.sq_ref else 0.0


def error_sums(out: torch.Tensor, ref: torch.Tensor) -> ErrorSums:
    """The sums of one (out, ref) pair, any dtype and device, equal shapes. Non-finite elements
    only set the flags (the sums are then meaningless and not read)."""
    if out.shape != ref.shape:
        raise ValueError(f"out and ref must have the same shape, got {tuple(out.shape)} and "
                         f"{tuple(ref.shape)}")
    a, b = out.detach().double().flatten(), ref.detach().double().flatten()
    return ErrorSums(l1_diff=float((a - b).abs().sum()), l1_ref=float(b.abs().sum()),
                     dot=float(a @ b), sq_out=float(a @ a), sq_ref=float(b @ b),
                     out_finite=bool(torch.isfinite(a).all()),
                     ref_finite=bool(torch.isfinite(b).all()))


def rel_l1(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_1 / ||ref||_1 in float64; +inf when out holds a NaN or Inf."""
    return error_sums(out, ref).rel_l1


def cosine(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors in float64; NaN when either is not finite."""
    return error_sums(out, ref).cos_sim


def errors(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Both measures as record fields: dict(rel_l1=..., cos_sim=...)."""
    sums = error_sums(out, ref)
    return dict(rel_l1=sums.rel_l1, cos_sim=sums.cos_sim)


def dense_tops(shape: Mapping, causal: bool, ms: float) -> float:
    """Dense-equivalent rate in 10^12/s of one call that took `ms`: 4·B·Hq·Nq·Nk·D / time, halved
    when causal, whatever the call skipped. `shape` holds the record fields batch, heads_q,
    seq_q, seq_k and head_dim."""
    work = 4 * shape["batch"] * shape["heads_q"] * shape["seq_q"] * shape["seq_k"] \
        * shape["head_dim"]
    return work / (2 if causal else 1) / (ms * 1e-3) / 1e12


def time_ms(fn: Callable, *, warmup: int = 3, reps: int = 10, inputs: Optional[Sequence] = None,
            device: Optional[str] = None) -> float:
    """Median time of one call of `fn` in milliseconds.

    fn is called `warmup` times untimed, then `reps` times timed; with `inputs`, call i is
    fn(inputs[i % len(inputs)]) (warm-up included), so that consecutive calls read different
    buffers (e.g. more than L2 holds). device "cuda": CUDA events around each call on the current
    stream, one synchronisation at the end (the GPU time, without the host's sync latency);
    "cpu": time.perf_counter around each call. Default: "cuda" when this process has
    initialised CUDA, else "cpu".
    """
    if reps < 1 or warmup < 0:
        raise ValueError(f"time_ms needs reps >= 1 and warmup >= 0, got {reps} and {warmup}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() and torch.cuda.is_initialized() else "cpu"
    if device not in ("cuda", "cpu"):
        raise ValueError(f"time_ms: device must be 'cuda' or 'cpu', got {device!r}")

    def call(i):
        return fn() if inputs is None else fn(inputs[i % len(inputs)])

    for i in range(warmup):
        call(i)
    if device == "cpu":
        times = []
        for i in range(warmup, warmup + reps):
            start = time.perf_counter()
            call(i)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    events = []
    for i in range(warmup, warmup + reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call(i)
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)
