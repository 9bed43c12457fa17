"""Speed against sparsity on the GPU, beside the dense and block-sparse baselines.

Per workload, at up to MAX_POINTS settings of the exact path's Pareto front (in Hilbert order for
grid workloads, as they are meant to run) plus the dense point:
- sparge-exact: sparge.attention, both stages (and the Hilbert gather/scatter) — what a user pays;
- sparge-stage1: sparge.predict_block_mask alone, tokens pre-ordered (no rate: no attention);
- sparge-stage2: sparge.block_sparse_attention on the mask Stage 1 predicted, tokens pre-ordered;
- flex: FlexAttention (torch.compile'd) on the same 128x64 tile mask, tokens pre-ordered;
and once per workload the dense SDPA cuDNN and Flash backends. Times are medians of CUDA-event
times after warm-up (sparge.measure.time_ms); TOPS are dense-equivalent (docs/bench-schema.md).
GQA heads are expanded to the query heads for SDPA and FlexAttention (Sparge reads them in place).
"""
import sys
from pathlib import Path

import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import sparge
from sparge.measure import dense_tops, errors, time_ms

from pareto import pareto_front
from sweep import Case

MAX_POINTS = 6
TIMING = dict(warmup=2, reps=5)  # per time_ms call: the report runs on a time budget
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))


def _expand(case: Case, k, v):
    group = case.shape["heads_q"] // case.shape["heads_kv"]
    if group == 1:
        return k, v
    return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


def pick_points(records, order: str):
    """The dense setting and up to MAX_POINTS front settings spread over sparsity."""
    rows = [r for r in records if r["impl"] == "sparge-exact" and r["order"] == order]
    front = [rows[i] for i in pareto_front([(r["sparsity"], r["rel_l1"]) for r in rows])]
    front = [r for r in front if r["sparsity"] > 0]
    if len(front) > MAX_POINTS:
        step = (len(front) - 1) / (MAX_POINTS - 1)
        front = [front[round(i * step)] for i in range(MAX_POINTS)]
    dense = [r for r in rows if r["family"] == "dense"]
    return dense[:1] + front


class Flex:
    """torch.compile'd flex_attention and the BlockMask conversion of bench/gpu."""

    def __init__(self):
        import torch._dynamo
        from torch.nn.attention.flex_attention import flex_attention
        from bench_attention import flex_block_mask
        for name in ("recompile_limit", "cache_size_limit"):  # one compile per shape
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        self.fn = torch.compile(flex_attention, dynamic=False)
        self.block_mask = flex_block_mask

    def __call__(self, q, k, v, mask, causal):
        bm = self.block_mask(mask.to_dense()[0], q.shape[2], causal)
        # Triton tiles that divide the 128x64 mask blocks: its own choice for head dim 64
        # (BLOCK_N 128) is refused by the lowering ("must be divisible by BLOCK_N").
        tiles = {"BLOCK_M": mask.block_q, "BLOCK_N": mask.block_k}
        return lambda: self.fn(q, k, v, block_mask=bm, kernel_options=tiles)


def run(case: Case, accuracy_records, rec, budget, *, flex=None, reserve=0.0):
    """Speed records of one case (GPU)."""
    fields = case.record_fields(case.spec.kind)
    order = case.orders[0]
    q, k, v, ref = case.ordered(order)
    kx, vx = _expand(case, k, v)
    causal, out, flex_ran = case.causal, [], False

    def emit(impl, ms, **extra):
        # Stage 1 alone does no attention: a dense-equivalent rate would mean nothing.
        tops = None if impl == "sparge-stage1" else dense_tops(case.shape, causal, ms)
        out.append(rec.emit(section="speed", impl=impl, order=order, ms=ms, tops=tops,
                            **fields, **extra))

    for impl, backend in (("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("sdpa-flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                fn = lambda: F.scaled_dot_product_attention(q, kx, vx, is_causal=causal)  # noqa
                err = errors(fn(), ref)
                emit(impl, time_ms(fn, **TIMING), sparsity=0.0, setting="dense", **err)
        except RuntimeError as exc:
            rec.note(f"{case.name}: {impl} unavailable: {str(exc).splitlines()[0]}")
    for point in pick_points(accuracy_records, order):
        if budget.expired(reserve):
            rec.note(f"{case.name}: time budget reached, speed sweep cut short")
            break
        opts = point["options"]
        opts = {key: float(val) if val in ("inf", "-inf") else val for key, val in opts.items()}
        grid = case.token_grid(order)
        full = lambda: sparge.attention(case.q, case.k, case.v, is_causal=causal,  # noqa
                                        token_grid=grid, **opts)
        label = dict(setting=point["setting"], sparsity=point["sparsity"],
                     rel_l1=point["rel_l1"], cos_sim=point["cos_sim"])
        emit("sparge-exact", time_ms(full, **TIMING), **label)
        stage1 = lambda: sparge.predict_block_mask(  # noqa: E731
            q, k, is_causal=causal,
            **{key: val for key, val in opts.items() if key != "pv_threshold"})
        mask = stage1()
        emit("sparge-stage1", time_ms(stage1, **TIMING), **label)
        pv = opts.get("pv_threshold", float("inf"))
        stage2 = lambda: sparge.block_sparse_attention(q, k, v, mask, pv_threshold=pv)  # noqa
        emit("sparge-stage2", time_ms(stage2, **TIMING), **label)
        # The first call of a shape compiles (tens of seconds): start it only with time left.
        if flex is not None and not budget.expired(reserve + (5 if flex_ran else 60)):
            try:
                fn = flex(q, kx, vx, mask, causal)
                o_flex = fn()
                err = errors(o_flex, ref)
                emit("flex", time_ms(fn, **TIMING), setting=point["setting"],
                     sparsity=mask.sparsity, rel_l1_vs_sparge=errors(o_flex, stage2())["rel_l1"],
                     **err)
                flex_ran = True
            except Exception as exc:  # noqa: BLE001 - a baseline failing must not stop the run
                rec.note(f"{case.name}: flex failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}")
                flex = None
        elif flex is not None:
            rec.note(f"{case.name}: FlexAttention not timed, too little of the time budget left")
            flex = None
    return out
