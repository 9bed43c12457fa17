"""Sliding windows from Python (issue 12): sparge.attention's window_left / window_right against
SDPA with the equivalent dense mask, the allowed key-block ranges and BlockMask stats, the
recognition of band masks (_dense_mask.options_for_mask) by patch_sdpa, and tiny Mistral and
Gemma 3 models with sliding-window layers run with attn_implementation="sparge" against "sdpa"."""
import importlib.util
import json
import math
import pathlib
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import sparge
from sparge import _dense_mask
from sparge.mask import key_band

from conftest import assert_close, dense_options, make_qkv

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(
    not HAS_TRANSFORMERS, reason="transformers is not installed: pip install transformers==5.17.0")


def band_mask(seq_q, seq_k, causal=False, causal_align="top_left", left=-1, right=-1):
    """The rule of the brief, written out independently of sparge.mask.key_band."""
    offset = seq_k - seq_q if causal_align == "bottom_right" else 0
    r = torch.arange(seq_q)[:, None] + offset
    c = torch.arange(seq_k)[None, :]
    allowed = torch.ones(seq_q, seq_k, dtype=torch.bool)
    if causal:
        allowed &= c <= r
    if left >= 0:
        allowed &= c >= r - left
    if right >= 0:
        allowed &= c <= r + right
    return allowed


CASES = [  # seq_q, seq_k, causal, align, left, right, heads_q, heads_kv
    (197, 197, True, "top_left", 50, -1, 4, 2),
    (197, 197, False, "top_left", 33, 70, 2, 2),
    (131, 301, True, "bottom_right", 90, -1, 4, 1),
    (131, 301, False, "bottom_right", -1, 5, 2, 1),
    (260, 173, True, "top_left", 100, 3, 3, 1),    # window_right under causal: no effect
    (173, 260, False, "top_left", 0, 0, 2, 2),     # the diagonal alone
    (173, 260, False, "bottom_right", 100, 100, 2, 2),
]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", CASES)
def test_windowed_attention_matches_sdpa_with_the_band_mask(case, backend):
    seq_q, seq_k, causal, align, left, right, hq, hkv = case
    q, k, v = make_qkv(heads_q=hq, heads_kv=hkv, seq_q=seq_q, seq_k=seq_k, seed=seq_q + seq_k)
    mask = band_mask(seq_q, seq_k, causal, align, left, right)
    assert mask.any(dim=1).all()  # SDPA's fully masked rows are NaN; the cases avoid them
    out, stats = sparge.attention(q, k, v, is_causal=causal, causal_align=align,
                                  window_left=left, window_right=right, backend=backend,
                                  return_stats=True, **dense_options())
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                              attn_mask=mask, enable_gqa=True)
    assert_close(out, expected, atol=1e-5)
    # Nothing skipped: every allowed tile, and only those, computed.
    assert stats.sparsity == 0.0
    tokens = stats.block_mask.to_token_mask()
    assert torch.equal(tokens, mask.expand_as(tokens))
    # λ = inf skips nothing by itself: every skipped pair is one the band hides from its rows,
    # counted independently here from the token mask.
    assert stats.lambda_skip_fraction == 0.0
    visited, skipped = stats.pv_counters.sum(dim=0).tolist()
    hidden = 0
    dense = stats.block_mask.to_dense()
    bq, bk = stats.block_mask.block_q, stats.block_mask.block_k
    for i in range(dense.shape[2]):
        for j in range(dense.shape[3]):
            if not dense[0, 0, i, j]:
                continue
            for r0 in range(i * bq, min(seq_q, (i + 1) * bq), 16):
                rows = mask[r0:min(seq_q, r0 + 16, (i + 1) * bq), j * bk:(j + 1) * bk]
                hidden += int(not rows.any())
    assert skipped == hidden * hq
    assert stats.block_mask.band_hidden_pairs().tolist() == [hidden] * hq


@pytest.mark.parametrize("case", CASES)
def test_allowed_key_range_is_the_blocks_holding_a_visible_pair(case):
    seq_q, seq_k, causal, align, left, right = case[:6]
    mask = band_mask(seq_q, seq_k, causal, align, left, right)
    block_q, block_k = 32, 16
    begin, end = sparge.allowed_key_range(seq_q, seq_k, block_q, block_k, causal, align,
                                          window_left=left, window_right=right)
    for i in range(begin.numel()):
        rows = mask[i * block_q:(i + 1) * block_q]
        blocks = [j for j in range(-(-seq_k // block_k))
                  if rows[:, j * block_k:(j + 1) * block_k].any()]
        assert (begin[i].item(), end[i].item()) == ((blocks[0], blocks[-1] + 1) if blocks
                                                    else (0, 0)), i
        assert blocks == list(range(begin[i].item(), end[i].item()))  # contiguous
    counts = sparge.allowed_key_blocks(seq_q, seq_k, block_q, block_k, causal, align,
                                       window_left=left, window_right=right)
    assert torch.equal(counts, end - begin)


def test_stage1_and_block_mask_stats_count_only_the_window():
    q, k, _ = make_qkv(heads_q=2, seq_q=700, head_dim=32, seed=1)
    mask = sparge.predict_block_mask(q, k, is_causal=True, window_left=200, topk=0.5)
    begin, end = mask.allowed_key_range()
    dense = mask.to_dense()
    slot = torch.arange(mask.num_k_blocks)
    inside = (slot >= begin[:, None]) & (slot < end[:, None])
    assert not (dense & ~inside).any()  # nothing kept outside the window
    assert mask.window_left == 200 and mask.window_right == -1
    kept, total = mask.tiles()
    assert int(total) == int((end - begin).sum()) * 2 and int(kept) == int(dense.sum())
    # Stage 2 takes the window from the mask.
    full = sparge.BlockMask.from_dense(inside.expand(1, 2, -1, -1), seq_q=700, seq_k=700,
                                       is_causal=True, window_left=200)
    assert full.sparsity == 0.0
    q, k, v = make_qkv(heads_q=2, seq_q=700, head_dim=32, seed=2)
    out = sparge.block_sparse_attention(q, k, v, full, pv_threshold=math.inf)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                              attn_mask=band_mask(700, 700, True, left=200))
    assert_close(out, expected, atol=1e-5)


def test_window_arguments_are_checked():
    q, k, v = make_qkv(seq_q=130, head_dim=16)
    with pytest.raises(ValueError, match="window_left"):
        sparge.attention(q, k, v, window_left=-2)
    with pytest.raises(TypeError, match="window_right"):
        sparge.attention(q, k, v, window_right=1.5)
    with pytest.raises(ValueError, match="token_grid"):
        sparge.attention(q, k, v, window_left=8, token_grid=(1, 10, 13))


# ----------------------------------------------------------------------- mask recognition

@pytest.mark.parametrize("case", CASES)
def test_band_masks_are_recognized_as_options(case):
    seq_q, seq_k = case[:2]
    mask = band_mask(*case[:6])
    options, why = _dense_mask.options_for_mask(mask[None, None], seq_q, seq_k)
    assert options is not None, why
    # The options describe exactly this band (possibly with another, equivalent alignment).
    lo, hi = key_band(seq_q, seq_k, options["is_causal"], options["causal_align"],
                      options["window_left"], options["window_right"])
    rows, cols = torch.arange(seq_q)[:, None], torch.arange(seq_k)[None, :]
    assert torch.equal((cols - rows >= lo) & (cols - rows <= hi), mask)


def test_masks_that_are_not_bands_are_named():
    n = 150
    band = band_mask(n, n, True, left=31)
    near = band.clone()
    near[100, 40] = True  # one key too many
    per_batch = torch.stack([band, band_mask(n, n, True, left=30)])[:, None]
    empty = band_mask(n, 90, True, "bottom_right")  # the first rows see no key
    bias = torch.zeros(n, n).masked_fill(~band, float("-inf")) + 0.5 * band
    for mask, fragment in ((near, "not one band"), (per_batch, "not one band"),
                           (empty, "sees no key"), (bias, "values other than 0 and -inf"),
                           (band.int(), "dtype other than bool"),
                           (band[None, None].expand(3, 1, n, n), "does not broadcast")):
        options, why = _dense_mask.options_for_mask(mask, n, mask.shape[-1],
                                                    (2, 4, n, mask.shape[-1]))
        assert options is None and fragment in why, (fragment, why)
    # A band whose edges follow different diagonals: row 0 sees key 3, row 1 key 4.
    options, why = _dense_mask.options_for_mask(band_mask(2, 10, left=-1, right=-1) &
                                                 (torch.arange(10) - torch.arange(2)[:, None]
                                                  == 3), 2, 10)
    assert options is None and "neither top_left nor bottom_right" in why
    assert _dense_mask.options_for_mask(torch.ones(3, 5, dtype=torch.bool), 3, 5) == ({}, "")


def test_patch_sdpa_serves_sliding_window_masks_and_falls_back_on_near_bands():
    q, k, v = make_qkv(batch=2, heads_q=4, heads_kv=2, seq_q=211, seq_k=211, head_dim=32,
                       seed=5)
    window = band_mask(211, 211, True, left=47)  # transformers' sliding_window=48
    chunk = band_mask(101, 211, True, "bottom_right", left=47)  # a chunk after a cache
    masks = [window, window[None, None].expand(2, 1, 211, 211),
             torch.zeros(211, 211).masked_fill(~window, float("-inf")),
             torch.zeros(211, 211).masked_fill(~window, torch.finfo(torch.float32).min),
             band_mask(211, 211, False, left=20, right=20)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        with sparge.patch_sdpa(min_seq_len=0, **dense_options()) as patch:
            got = [F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)
                   for m in masks]
            got_chunk = F.scaled_dot_product_attention(q[:, :, :101], k, v, attn_mask=chunk,
                                                       enable_gqa=True)
    assert patch.sparge_calls == 6 and patch.fallbacks == {}
    for out, m in zip(got, masks):
        m = m if m.dtype == torch.bool else m.double()
        expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                  attn_mask=m, enable_gqa=True)
        assert_close(out, expected, atol=1e-5)
    expected = F.scaled_dot_product_attention(q[:, :, :101].double(), k.double(), v.double(),
                                              attn_mask=chunk, enable_gqa=True)
    assert_close(got_chunk, expected, atol=1e-5)
    # One key outside the band: no flags say it, so on cpu Sparge takes the mask itself.
    near = window.clone()
    near[150, 10] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        with sparge.patch_sdpa(min_seq_len=0, **dense_options()) as patch:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=near, enable_gqa=True)
    assert patch.sparge_calls == 1 and patch.fallbacks == {}
    assert_close(out, F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                     attn_mask=near, enable_gqa=True), atol=1e-5)
    # A window set on the patch is not replaced by a mask's: the mask goes in as a mask, and
    # both apply.
    with sparge.patch_sdpa(min_seq_len=0, window_left=10, **dense_options()) as patch:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=window, enable_gqa=True)
    assert patch.sparge_calls == 1 and patch.fallbacks == {}
    both = window & band_mask(211, 211, False, left=10, right=-1)
    assert_close(out, F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                     attn_mask=both, enable_gqa=True), atol=1e-5)


# ------------------------------------------------------------------------ transformers models

def tiny_model(kind, attn_implementation, window=16):
    import transformers
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=256, sliding_window=window)
    if kind == "mistral":
        config = transformers.MistralConfig(**common)
        model_class = transformers.MistralForCausalLM
    else:  # Gemma 3: sliding layers and one global layer, as the real ones interleave them
        config = transformers.Gemma3TextConfig(
            **common, layer_types=["sliding_attention", "sliding_attention",
                                   "full_attention", "sliding_attention"])
        model_class = transformers.Gemma3ForCausalLM
    torch.manual_seed(0)
    model = model_class(config).eval()
    model.set_attn_implementation(attn_implementation)
    return model


@needs_transformers
@pytest.mark.parametrize("kind", ["mistral", "gemma3"])
def test_tiny_sliding_window_models_match_sdpa_with_nothing_skipped(kind):
    from sparge.integrations import transformers as sparge_hf
    sparge_hf.register()
    ids = torch.randint(0, 97, (1, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = tiny_model(kind, "sdpa")(ids).logits
        eager = tiny_model(kind, "eager")(ids).logits
        model = tiny_model(kind, "sparge")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback
            with sparge_hf.configure(sim_threshold=1.0, cdf_threshold=1.0,
                                     pv_threshold=math.inf) as run:
                got = model(ids).logits
    assert run.sparge_calls == 4 and run.fallbacks == {}, run
    diff = (got - reference).abs().max().item()
    print(f"{kind}: max |logits(sparge) - logits(sdpa)| = {diff:.3g}, "
          f"eager vs sdpa {(eager - reference).abs().max().item():.3g}")
    assert diff < 1e-4
    assert (eager - reference).abs().max().item() < 1e-4
    # The window matters at 100 tokens: the same weights with a window of 128 give others.
    with torch.no_grad():
        unwindowed = tiny_model(kind, "sdpa", window=128)(ids).logits
    assert (unwindowed - reference).abs().max().item() > 1e-3


@needs_transformers
def test_the_gemma3_window_benchmark_runs_tiny(tmp_path):
    # bench/eval/gemma_window.py's code path (the device run uses --random-weights at 8192
    # tokens on cuda): the tiny Gemma 3 configuration past its window of 64, so transformers
    # passes its sliding layers a mask, which Sparge serves as a window.
    script = pathlib.Path(__file__).resolve().parents[2] / "bench" / "eval" / "gemma_window.py"
    out = tmp_path / "gemma.jsonl"
    run = subprocess.run([sys.executable, str(script), "--tiny", "--tokens", "300", "--commit",
                          "test", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["impl"], r["setting"], r["layer_type"]) for r in records} == {
        (impl, setting, t) for impl, setting in (("sdpa-cpu", "reference"),
                                                 ("sparge-cpu", "nothing skipped"),
                                                 ("sparge-cpu", "defaults"))
        for t in ("sliding", "global")}
    for r in records:
        assert r["seq_q"] == 300 and r["layers"] == (4 if r["layer_type"] == "sliding" else 2)
        if r["impl"] == "sparge-cpu":  # every call served, none handed back to SDPA
            assert r["served"] == r["calls"] == r["layers"] and r["fallback"] == 0, r
        if r["setting"] == "nothing skipped":
            assert r["logits_rel_l1"] < 1e-5 and r["top1_agree"] == 1.0, r
        if r["setting"] == "defaults":  # from the untimed statistics pass
            assert r["sparsity"] is not None and 0.0 <= r["sparsity"] <= 1.0, r
