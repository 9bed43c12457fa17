"""Real models: Sparge on captured attention inputs, per layer, and end to end.

bench/eval/real_models.py (its own module) captures q, k, v of a real model's attention layers
offline and runs the whole model under sparge.patch_sdpa. For every setting of a small grid this
records, per captured layer, sparsity, relative L1 and cosine similarity against full attention
of the same inputs; their pooled values (sum of |o - ref| over sum of |ref| over all layers, and
skipped over computable tiles); and the model's end-to-end metric (embedding cosine similarity
or logits KL divergence against the unpatched model) with the sparsity the patch measured.
"""
import inspect
import math

import torch

import sparge
from sparge.measure import ErrorSums, error_sums

from reference import reference_attention
from sweep import _setting


# The --cpu version: MiniLM only, on 3 of its 12 inputs (a 2-core CPU needs about 1 s per
# 512-token window and setting; SmolLM2's 4096-token prefill about 20 s), and a smaller grid.
CPU_SOURCES = ("minilm",)
CPU_E2E = dict(inputs_limit=3)


def settings(small: bool = False, causal: bool = False):
    """The real models' grid; causal models also keep key block 0 (attention_sink) in some."""
    cdfs = (0.7, 0.9, 0.98) if small else (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.995)
    topks = (0.25, 0.5) if small else (0.1, 0.25, 0.5)
    grid = [_setting("dense")]
    grid += [_setting("cdf", cdf_threshold=c, sim_threshold=-0.1) for c in cdfs]
    grid += [_setting("topk", topk=t, sim_threshold=-0.1) for t in topks]
    grid.append(_setting("cdf", cdf_threshold=0.9, sim_threshold=0.3, pv_threshold=10.0))
    if causal:
        sink_cdfs = (0.9, 0.98, 0.995, 0.999) if small else (0.7, 0.9, 0.95, 0.98, 0.995, 0.999)
        grid += [_setting("sink", cdf_threshold=c, sim_threshold=-0.1, attention_sink=True)
                 for c in sink_cdfs]
        grid.append(_setting("sink", topk=0.5, sim_threshold=-0.1, attention_sink=True))
    return grid


def _module():
    try:
        import real_models
    except ImportError as exc:
        return None, f"bench/eval/real_models.py could not be imported ({exc})"
    return real_models, None


def _field(obj, name, default=None):
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


class _Layer:
    """One capture on the device in the run dtype, with its reference."""

    def __init__(self, capture, device, dtype):
        self.layer = _field(capture, "layer")
        self.causal = bool(_field(capture, "causal", False))
        self.scale = _field(capture, "scale")
        grid = _field(capture, "token_grid")
        self.grid = tuple(grid) if grid and not self.causal else None
        self.q, self.k, self.v = (_field(capture, n).to(device=device, dtype=dtype)
                                  for n in ("q", "k", "v"))
        self.ref = reference_attention(self.q, self.k, self.v, causal=self.causal,
                                       scale=self.scale)

    def run(self, options):
        out, stats = sparge.attention(self.q, self.k, self.v, is_causal=self.causal,
                                      scale=self.scale, token_grid=self.grid,
                                      return_stats=True, **options)
        kept, dense = stats.block_mask.tiles()
        return dict(sums=error_sums(out, self.ref), kept=int(kept), dense=int(dense))


def _pooled(parts):
    """rel_l1 over all layers as one tensor, sparsity over all their tiles, the worst cosine
    (NaN when a layer's is: min() would keep or drop a NaN depending on its position)."""
    sums = sum((p["sums"] for p in parts), ErrorSums())
    kept, dense = sum(p["kept"] for p in parts), sum(p["dense"] for p in parts)
    cos = [p["sums"].cos_sim for p in parts]
    worst = math.nan if any(math.isnan(c) for c in cos) else min(cos, default=None)
    return dict(rel_l1=sums.rel_l1, sparsity=1.0 - kept / dense if dense else 0.0,
                cos_sim_min=worst)


def run(rec, budget, device: str, dtype, *, small=False, only=None, reserve=0.0):
    """Records of every available real model (those in `only`, when given); notes for the
    unavailable ones. small: the --cpu plan (smaller grid, fewer end-to-end inputs)."""
    module, why = _module()
    if module is None:
        rec.note(f"real models skipped: {why}")
        return []
    out = []
    for name, source in module.SOURCES.items():
        if only is not None and name not in only:
            rec.note(f"{name}: not run in this version of the report (--real all runs it)")
            continue
        if budget.expired(reserve):
            rec.note(f"{name}: time budget reached, real model skipped")
            continue
        if not module.available(name):
            rec.note(f"{name}: unavailable: {module.why_unavailable(name)}")
            continue
        try:
            out += _one(module, name, source, rec, budget, device, dtype, reserve, small)
        except Exception as exc:  # noqa: BLE001 - one model failing must not stop the report
            rec.note(f"{name}: failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    return out


def _e2e_kwargs(module, small):
    """The quick-run limits, where this real_models.end_to_end takes them."""
    if not small:
        return {}
    accepted = inspect.signature(module.end_to_end).parameters
    return {key: val for key, val in CPU_E2E.items() if key in accepted}


def _one(module, name, source, rec, budget, device, dtype, reserve, small):
    dtype_name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    with torch.no_grad():
        layers = [_Layer(c, device, dtype) for c in module.capture(name, device, dtype)]
    if not layers:
        rec.note(f"{name}: capture returned no layers")
        return []
    first = layers[0]
    base = dict(workload=name, case=name, model=_field(source, "model", name),
                input_desc=_field(source, "input_desc"), dtype=dtype_name,
                batch=first.q.shape[0], heads_q=first.q.shape[1], heads_kv=first.k.shape[1],
                head_dim=first.q.shape[3], seq_q=first.q.shape[2], seq_k=first.k.shape[2],
                causal=first.causal, ms=None, tops=None)
    # Without the model (captures from the committed file only) there is no end-to-end run.
    has_model = getattr(module, "model_available", lambda _: True)(name)
    if not has_model:
        rec.note(f"{name}: end-to-end metric not measured: {module.why_unavailable(name)}")
    e2e_kwargs = _e2e_kwargs(module, small)
    out, metric = [], _field(source, "metric")
    if has_model:
        reference = module.end_to_end(name, device, dtype, None, **e2e_kwargs)
        metric = reference.get("metric", metric)
        out.append(rec.emit(section="real-e2e", impl="unpatched", setting="unpatched",
                            family="reference", options=None, sparsity=0.0, rel_l1=None,
                            cos_sim=None, metric=metric, value=reference.get("value"),
                            inputs=len(reference.get("per_input", [])), **base))
    for setting in settings(small, causal=any(layer.causal for layer in layers)):
        if budget.expired(reserve):
            rec.note(f"{name}: time budget reached, real-model settings cut short")
            break
        parts = []
        for layer in layers:
            part = layer.run(setting.options)
            parts.append(part)
            out.append(rec.emit(
                section="real-layers", impl="sparge-exact", setting=setting.label,
                family=setting.family, options=setting.options, layer=layer.layer,
                **{**base, "seq_q": layer.q.shape[2], "seq_k": layer.k.shape[2],
                   "heads_q": layer.q.shape[1], "heads_kv": layer.k.shape[1],
                   "causal": layer.causal},
                sparsity=1.0 - part["kept"] / part["dense"] if part["dense"] else 0.0,
                rel_l1=part["sums"].rel_l1, cos_sim=part["sums"].cos_sim))
        pooled = _pooled(parts)
        e2e = module.end_to_end(name, device, dtype, dict(setting.options, min_seq_len=0),
                                **e2e_kwargs) if has_model else {}
        out.append(rec.emit(
            section="real-e2e", impl="sparge-exact", setting=setting.label,
            family=setting.family, options=setting.options, layers=len(layers),
            layers_rel_l1=pooled["rel_l1"], layers_sparsity=pooled["sparsity"],
            layers_cos_sim_min=pooled["cos_sim_min"], sparsity=e2e.get("sparsity"),
            rel_l1=None, cos_sim=None, metric=e2e.get("metric", metric), value=e2e.get("value"),
            inputs=len(e2e.get("per_input", [])), **base))
    return out

