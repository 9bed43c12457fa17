"""A diffusers video DiT at >= 16K tokens (issue 13): diffusers' WanTransformer3DModel with
Wan2.1-1.3B's geometry (12 heads x 128, dim 1536, text_dim 4096, ffn 8960, patch (1, 2, 2),
cross-attention to 512 text tokens) but --layers blocks of seeded random weights; bf16, eval,
no grad. The same forward runs four ways:

  native    diffusers' default backend, F.scaled_dot_product_attention (the kernel PyTorch
            picks: torch._fused_sdp_choice on the calls' own tensors)
  defaults  the "sparge" backend (sparge.integrations.diffusers) at sparge.attention's
            defaults, grid="auto": self-attention in Hilbert order over the patch grid
  sparse    the "sparge" backend at --sparse (default topk=0.1 with the similarity gate off)
  exact     the "sparge" backend skipping nothing (sim 1, cdf 1, pv inf): the pipeline's cost

Per setting: the forward's time (CUDA events, median of --reps after --warmup), its output's
rel L1 and cosine against native's; each attention layer's tile sparsity (collect_stats, in a
run of its own: it synchronizes); each attention call's time (median of --call-reps runs; CUDA
events around the dispatch_attention_fn that the Wan processor calls, so a sparge call counts
routing, gathers, Stage 1 and Stage 2), self-attention (video x video, attn1) apart from
cross-attention (video x text, attn2; sparge serves it in natural order, or SDPA does when the
text is shorter than min_seq_len: see fallbacks). Tables last; docs/bench-schema.md records in
--out-dir.

    python3 bench/gpu/bench_diffusers.py --commit $(git rev-parse --short HEAD) --out-dir .
    python3 bench/gpu/bench_diffusers.py --frames 11 ...   # 41 video frames: 17160 tokens
    python3 bench/gpu/bench_diffusers.py --device cpu --tiny   # a smoke run in seconds
"""
import argparse
import ast
import contextlib
import datetime
import math
import os
import statistics
import sys
import time

import torch
from diffusers import WanTransformer3DModel
from diffusers.models import attention_dispatch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.transformers import transformer_wan
from torch.nn.attention import SDPBackend

import sparge.integrations.diffusers as sparge_diffusers
from jsonl_out import record_path, write_jsonl
from sparge.measure import dense_tops, errors, time_ms
from sparge.patch import CallCounts

WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960,
                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
TINY = dict(WAN_1_3B, num_attention_heads=2, attention_head_dim=16, in_channels=4,
            out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, rope_max_seq_len=64)
EXACT = dict(sim_threshold=1.0, cdf_threshold=1.0, pv_threshold=math.inf)
WORKLOAD = "wan2.1-1.3b-geometry-random-weights"


def parse_options(text):
    """'topk=0.1,sim_threshold=-1' -> {'topk': 0.1, 'sim_threshold': -1}: Python literals and
    inf; anything else stays a string (estimate=sampled_rows)."""
    def value(v):
        try:
            return math.inf if v == "inf" else ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    return {k.strip(): value(v.strip()) for k, _, v in
            (item.partition("=") for item in text.split(",") if item.strip())}


def describe(options):
    return "native SDPA" if options is None else \
        ", ".join(f"{k}={v}" for k, v in options.items()) or "sparge.attention's defaults"


def stamp(cuda):
    if not cuda:
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


@contextlib.contextmanager
def timed_calls(model, cuda):
    """Yields (calls, sdpa): every attention call of a Wan model, as (attention module, "self"
    or "cross", key length, start, end), and which SDPA kernel PyTorch would pick for the
    native backend's [B, H, N, D] view of each kind of call. Swaps the dispatch_attention_fn
    that transformer_wan imported (what WanAttnProcessor calls, whatever the backend)."""
    if not hasattr(transformer_wan, "dispatch_attention_fn"):
        raise RuntimeError("diffusers' transformer_wan no longer imports dispatch_attention_fn "
                           "(written against 0.42.1)")
    real, calls, sdpa, running = transformer_wan.dispatch_attention_fn, [], {}, [None]

    def timed(query, key, value, *args, **kwargs):
        kind = "self" if key.shape[1] == query.shape[1] else "cross"
        if kind not in sdpa:  # on the host, before the timed region
            try:
                qkv = (t.transpose(1, 2) for t in (query, key, value))
                sdpa[kind] = SDPBackend(torch._fused_sdp_choice(*qkv)).name
            except (AttributeError, RuntimeError, TypeError, ValueError):
                sdpa[kind] = "unknown"
        start = stamp(cuda)
        out = real(query, key, value, *args, **kwargs)
        calls.append((running[0], kind, key.shape[1], start, stamp(cuda)))
        return out

    hooks = [m.register_forward_pre_hook(lambda _m, _a, name=name: running.__setitem__(0, name))
             for name, m in model.named_modules() if isinstance(m, AttentionModuleMixin)]
    transformer_wan.dispatch_attention_fn = timed
    try:
        yield calls, sdpa
    finally:
        transformer_wan.dispatch_attention_fn = real
        for hook in hooks:
            hook.remove()


def medians(calls, cuda):
    """{layer: (kind, key length, median ms)} in call order."""
    if cuda:
        torch.cuda.synchronize()
    times = {}
    for layer, kind, seq_k, a, b in calls:
        times.setdefault((layer, kind, seq_k), []).append(
            a.elapsed_time(b) if cuda else (b - a) * 1e3)
    return {layer: (kind, seq_k, statistics.median(ms))
            for (layer, kind, seq_k), ms in times.items()}


def build(args):
    """The model (seeded random weights, made on the device) and its inputs."""
    config = dict(TINY if args.tiny else WAN_1_3B, num_layers=2 if args.tiny else args.layers)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = WanTransformer3DModel(**config).to(dtype).eval()
    gen = torch.Generator(args.device).manual_seed(args.seed + 1)
    shapes = dict(hidden_states=(1, config["in_channels"], args.frames, args.height, args.width),
                  encoder_hidden_states=(1, args.text_tokens, config["text_dim"]))
    inputs = {name: torch.randn(shape, generator=gen, device=args.device).to(dtype)
              for name, shape in shapes.items()}
    return model, dict(inputs, timestep=torch.tensor([500], device=args.device)), config


def measure(model, inputs, options, args):
    """One setting (options None: diffusers' default backend): the forward's time and output,
    the stats of every layer, and the median time of every attention call."""
    def forward():
        return model(**inputs, return_dict=False)[0]

    def backend(**extra):
        return contextlib.nullcontext() if options is None else \
            sparge_diffusers.attention_backend(model, grid="auto", **options, **extra)

    with backend():
        out = forward()
        ms = time_ms(forward, warmup=args.warmup, reps=args.reps, device=args.device)
    with backend(collect_stats=True) as run:
        forward()
    with backend(), timed_calls(model, args.device == "cuda") as (calls, sdpa):
        for _ in range(args.call_reps):
            forward()
    stats, report = ({}, None) if run is None else (run.stats, run.report())
    return dict(options=options, out=out, ms=ms, stats=stats, report=report,
                calls=medians(calls, args.device == "cuda"), sdpa=sdpa if options is None else {})


def total(stats, layers):
    """The CallCounts of `layers` added up (sparsity over their tiles, fallbacks by reason)."""
    counts = CallCounts()
    for name in layers:
        counts.add(stats.get(name, CallCounts()))
    return counts


def fallbacks(stats):
    return "; ".join(f"{n}x {why}" for why, n in total(stats, stats).fallbacks.items()) or "none"


def fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def tables(results, base, title):
    """Prints the two Markdown tables; returns the docs/bench-schema.md records."""
    native = results["native"]
    kinds = {layer: kind for layer, (kind, _, _) in native["calls"].items()}  # model order
    by_kind = {k: [n for n in kinds if kinds[n] == k] for k in ("self", "cross")}
    shape = dict(batch=1, heads_q=base["heads_q"], seq_q=base["seq_q"], head_dim=base["head_dim"])
    attn_ms = {name: {k: sum(r["calls"][n][2] for n in by_kind[k] if n in r["calls"])
                      for k in by_kind} for name, r in results.items()}
    records = []
    print(f"\n## {title}\n\nnative SDPA kernel by call kind: {native['sdpa']}\n")
    print("| setting | options | forward ms | x native | self-attn ms | x native | cross-attn ms "
          "| rel L1 | cos | self sparsity | cross sparsity | fallbacks |\n" + "|---" * 12 + "|")
    for name, r in results.items():
        err = dict(rel_l1=None, cos_sim=None) if r["options"] is None else \
            errors(r["out"], native["out"])
        spars, t = {k: total(r["stats"], by_kind[k]).sparsity for k in by_kind}, attn_ms[name]
        print(f"| {name} | {describe(r['options'])} | {r['ms']:.2f} | "
              f"{native['ms'] / r['ms']:.2f} | {t['self']:.2f} | "
              f"{attn_ms['native']['self'] / t['self']:.2f} | {t['cross']:.2f} | "
              f"{fmt(err['rel_l1'], 4)} | {fmt(err['cos_sim'], 5)} | {spars['self']:.3f} | "
              f"{spars['cross']:.3f} | {fallbacks(r['stats'])} |")
        common = dict(base, impl="diffusers-native" if r["options"] is None else
                      "diffusers-sparge", setting=name, options=describe(r["options"]))
        records.append(dict(common, scope="forward", seq_k=base["seq_q"], sparsity=spars["self"],
                            cross_sparsity=spars["cross"], ms=r["ms"], tops=None,
                            speedup=native["ms"] / r["ms"], self_attn_ms=t["self"],
                            cross_attn_ms=t["cross"], **err,
                            rel_l1_ref="the diffusers-native forward's output",
                            fallbacks=fallbacks(r["stats"]), sdpa_kernel=r["sdpa"] or None))
        for layer, (kind, seq_k, ms) in r["calls"].items():
            counts = r["stats"].get(layer)
            records.append(dict(common, scope=f"{kind}-attention", layer=layer, seq_k=seq_k,
                                sparsity=counts.sparsity if counts else 0.0, ms=ms,
                                tops=dense_tops(dict(shape, seq_k=seq_k), False, ms),
                                rel_l1=None, cos_sim=None, served_by="sdpa" if
                                counts is None or counts.fallbacks else "sparge"))
    names = [n for n in results if n != "native"]
    print("\n| layer | kind | native ms | " + " | ".join(f"{n} ms" for n in names) + " | " +
          " | ".join(f"{n} sparsity" for n in names) + " |\n" + "|---" * (3 + 2 * len(names))
          + "|")
    for layer, kind in kinds.items():
        times = [fmt(results[n]["calls"].get(layer, (0, 0, None))[2]) for n in names]
        spars = [fmt(results[n]["stats"][layer].sparsity if layer in results[n]["stats"]
                     else None) for n in names]
        print(f"| {layer} | {kind} | {native['calls'][layer][2]:.3f} | " +
              " | ".join(times + spars) + " |")
    return records


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="smoke run: 2 heads x 16, 2 layers, "
                    "latents [1, 4, 4, 16, 16] (256 tokens), 16 text tokens, float32")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--frames", type=int, default=21, help="latent frames (81 video frames: 21)")
    ap.add_argument("--height", type=int, default=60, help="latent height (480 pixels: 60)")
    ap.add_argument("--width", type=int, default=104, help="latent width (832 pixels: 104)")
    ap.add_argument("--text-tokens", type=int, default=512)
    ap.add_argument("--sparse", default="topk=0.1,sim_threshold=-1.0",
                    help="the sparser setting's sparge.attention keywords: k=v,k=v")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--call-reps", type=int, default=3, help="runs that time each attention call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=".")
    args = ap.parse_args(argv)
    if args.tiny:
        args.frames, args.height, args.width, args.text_tokens = 4, 16, 16, 16
        args.reps, args.warmup, args.call_reps = min(args.reps, 2), min(args.warmup, 1), 1
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_diffusers.py: no CUDA device (--device cpu --tiny runs a smoke test)")
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    start = time.perf_counter()
    model, inputs, config = build(args)
    dtype = "bf16" if args.device == "cuda" else "float32"
    grid = sparge_diffusers.model_grid(model, inputs["hidden_states"])
    tokens, heads = math.prod(grid), config["num_attention_heads"]
    active = attention_dispatch._AttentionBackendRegistry.get_active_backend()[0].value
    title = (f"Wan2.1-1.3B geometry, {config['num_layers']} layers, random weights: {tokens} "
             f"video tokens (grid {grid}) + {args.text_tokens} text tokens, {device}, {dtype}, "
             f"torch {torch.__version__}")
    print(f"{title}; diffusers' default backend {active}; built in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    settings = dict(native=None, defaults={}, sparse=parse_options(args.sparse), exact=EXACT)
    results = {}
    with torch.no_grad():
        for name, options in settings.items():
            begin = time.perf_counter()
            results[name] = r = measure(model, inputs, options, args)
            print(f"{name} ({describe(options)}): forward {r['ms']:.2f} ms "
                  f"[{time.perf_counter() - begin:.1f} s]\n{r['report'] or ''}", flush=True)
    base = dict(date=datetime.date.today().isoformat(), device=device, commit=args.commit,
                workload=WORKLOAD, dtype=dtype, head_dim=config["attention_head_dim"], batch=1,
                heads_q=heads, heads_kv=heads, seq_q=tokens, causal=False,
                layers=config["num_layers"], latents=list(inputs["hidden_states"].shape),
                grid=list(grid), text_tokens=args.text_tokens, reps=args.reps,
                call_reps=args.call_reps)
    records = tables(results, base, title)
    os.makedirs(args.out_dir, exist_ok=True)
    write_jsonl(record_path(args.out_dir, device, f"diffusers-wan-{tokens}"), records)
    return records


if __name__ == "__main__":
    main()
