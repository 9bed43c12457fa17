"""sparge.sdpa and sparge.patch_sdpa: the drop-in, the routing, and the PyTorch fallbacks with
one warning per reason."""
import inspect
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import sparge
from conftest import assert_close, dense_options, make_qkv

SDPA_PARAMETERS = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
                   "enable_gqa"]


def test_sdpa_has_the_exact_signature():
    params = inspect.signature(sparge.sdpa).parameters
    assert list(params) == SDPA_PARAMETERS
    defaults = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
    assert defaults == dict(attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                            enable_gqa=False)
    with sparge.patch_sdpa():
        assert list(inspect.signature(F.scaled_dot_product_attention).parameters) == \
            SDPA_PARAMETERS


def test_sdpa_matches_torch_when_nothing_is_skipped():
    q, k, v = make_qkv(heads_q=4, heads_kv=2, seq_q=200, seq_k=260, head_dim=32, seed=1)
    with sparge.patch_sdpa(min_seq_len=0, **dense_options()) as patch:
        got = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2, enable_gqa=True)
        three_d = F.scaled_dot_product_attention(q[:, 0], k[:, 0], v[:, 0])
    assert patch.sparge_calls == 2 and patch.fallbacks == {}
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True,
                                              scale=0.2, enable_gqa=True)
    assert_close(got, expected, atol=1e-5)
    assert_close(three_d, F.scaled_dot_product_attention(*(t[:, 0].double() for t in (q, k, v))),
                 atol=1e-5)


def test_value_head_dim_of_its_own_is_served():
    """MLA-style calls (v narrower than q and k, as DeepSeek's attention makes them) run in
    Sparge, not in the fallback; k narrower than q stays PyTorch's error."""
    q, k, _ = make_qkv(heads_q=4, heads_kv=4, seq_q=200, seq_k=200, head_dim=48, seed=5)
    v = torch.randn(1, 4, 200, 32, generator=torch.Generator().manual_seed(6))
    with sparge.patch_sdpa(min_seq_len=0, **dense_options()) as patch:
        got = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        with pytest.raises(RuntimeError):
            F.scaled_dot_product_attention(q, k[..., :32], v)
    assert patch.sparge_calls == 1 and patch.fallbacks == {}
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    assert got.shape == (1, 4, 200, 32)
    assert_close(got, expected, atol=1e-5)


def test_patch_counts_add_up_tiles_and_are_a_copy():
    q, k, v = make_qkv(heads_q=2, seq_q=300, head_dim=32, seed=3)
    with sparge.patch_sdpa(min_seq_len=0, collect_stats=True, **dense_options()) as patch:
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
        F.scaled_dot_product_attention(q[:, :, :10], k, v)  # shorter than a block: still Sparge
    counts = patch.counts
    # Causal 300 x 300 with 128 x 64 tiles: query blocks see 2, 4 and 5 key blocks, per head.
    assert counts.sparge_calls == 2 and counts.tiles_dense == 2 * (2 + 4 + 5) + 2 * 5
    assert counts.tiles_kept == counts.tiles_dense and patch.sparsity == 0.0
    counts.tiles_kept = 0  # a copy: the patch's own counts do not change
    assert patch.counts.tiles_kept == patch.counts.tiles_dense


def test_default_sdpa_runs_sparge():
    q, k, v = make_qkv(seq_q=300, head_dim=32, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback for a plain long call
        got = sparge.sdpa(q, k, v)
    assert_close(got, F.scaled_dot_product_attention(q, k, v), atol=0.05)


def test_on_call_hook_reports_every_call():
    calls = []
    q, k, v = make_qkv(batch=2, heads_q=4, heads_kv=2, seq_q=300, seq_k=260)
    short = make_qkv(seq_q=16)
    with sparge.patch_sdpa(on_call=calls.append, topk=0.5, sim_threshold=-1.0) as patch:
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sparge.SpargeFallbackWarning)
            F.scaled_dot_product_attention(*short, is_causal=True)
    assert patch.sparge_calls == 1 and len(calls) == 2
    served, fallback = calls
    assert served.impl == "sparge" and served.reason is None and served.ms > 0
    assert (served.batch, served.heads_q, served.heads_kv, served.seq_q, served.seq_k,
            served.head_dim) == (2, 4, 2, 300, 260, 32)
    assert served.sparsity == served.stats.sparsity and 0.3 < served.sparsity < 0.7
    assert served.dtype == q.dtype and served.device == q.device and not served.is_causal
    assert torch.equal(out, sparge.attention(q, k, v, topk=0.5, sim_threshold=-1.0))
    assert fallback.impl == "sdpa" and "min_seq_len" in fallback.reason
    assert fallback.ms is None and fallback.sparsity is None and fallback.is_causal
    assert fallback.seq_q == 16
    with pytest.raises(TypeError, match="on_call must be callable"):
        sparge.patch_sdpa(on_call="print")


def test_patch_restores_and_nests():
    original = F.scaled_dot_product_attention
    with sparge.patch_sdpa() as outer:
        patched = F.scaled_dot_product_attention
        assert patched is not original
        with sparge.patch_sdpa(topk=0.5):
            assert F.scaled_dot_product_attention not in (original, patched)
        assert F.scaled_dot_product_attention is patched
    assert F.scaled_dot_product_attention is original
    assert outer.sparge_calls == 0
    with pytest.raises(RuntimeError):
        with sparge.patch_sdpa():
            raise RuntimeError("inside")
    assert F.scaled_dot_product_attention is original


def test_masks_that_are_flags_run_sparge():
    # All-true and exactly causal masks (bool or additive, 2-D or 4-D) say nothing is_causal
    # cannot: Sparge serves them, with the alignment the pattern has, and matches SDPA with the mask.
    q, k, v = make_qkv(heads_q=2, seq_q=150, seq_k=230, head_dim=32, seed=6)
    rows, cols = torch.arange(150)[:, None], torch.arange(230)[None, :]
    top_left = cols <= rows
    bottom_right = cols <= rows + 80
    additive = torch.zeros(1, 1, 150, 230).masked_fill(~bottom_right, float("-inf"))
    masks = [torch.ones(150, 230, dtype=torch.bool), top_left, bottom_right, additive]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        with sparge.patch_sdpa(min_seq_len=0, **dense_options()) as patch:
            got = [F.scaled_dot_product_attention(q, k, v, attn_mask=m) for m in masks]
    assert patch.sparge_calls == 4 and patch.fallbacks == {}
    for out, m in zip(got, masks):
        expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                  attn_mask=m if m.dtype == torch.bool else m.double())
        assert_close(out, expected, atol=1e-5)
    # One masked key too many or too few is a real mask: no flags say it, so on cpu Sparge takes
    # the mask itself (on cuda PyTorch serves it: test_attn_mask.py).
    almost = top_left.clone()
    almost[100, 120] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        with sparge.patch_sdpa(min_seq_len=0, **dense_options()) as patch:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=almost)
    assert patch.sparge_calls == 1 and patch.fallbacks == {}
    assert_close(out, F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                     attn_mask=almost), atol=1e-5)


def test_causal_mask_on_a_grid_call_stays_a_mask():
    # A call that reorders tokens along a grid (the diffusers backend) cannot run causally: its
    # causal mask stays a mask, which Sparge reorders with the tokens on cpu (PyTorch serves it
    # on cuda); an all-true mask runs Sparge without one.
    from sparge import patch as patch_module
    q, k, v = make_qkv(seq_q=200, head_dim=32, seed=7)
    causal = torch.ones(200, 200, dtype=torch.bool).tril()
    router = patch_module._Router(0, dense_options())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        got = router(q, k, v, attn_mask=causal, token_grid=(1, 10, 20))
    assert_close(got, F.scaled_dot_product_attention(q, k, v, attn_mask=causal), atol=1e-5)
    router(q, k, v, attn_mask=torch.ones(200, 200, dtype=torch.bool), token_grid=(1, 10, 20))
    assert router.sparge_calls == 2 and router.counts.grid_calls == 2


def test_fallbacks_warn_once_per_reason_and_match_torch():
    q, k, v = make_qkv(seq_q=300, head_dim=32, seed=3)
    short = make_qkv(seq_q=20, head_dim=32, seed=4)
    mask = torch.rand(300, 300) > 0.3
    torch_sdpa = F.scaled_dot_product_attention
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sparge.patch_sdpa(min_seq_len=64) as patch:
            for _ in range(3):  # repeated calls: still one warning per reason
                masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                small = F.scaled_dot_product_attention(*short)
                wide = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
            torch.manual_seed(0)
            dropped = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
            grad_q = q.clone().requires_grad_()
            trained = F.scaled_dot_product_attention(grad_q, k, v)
    reasons = [str(w.message) for w in caught
               if issubclass(w.category, sparge.SpargeFallbackWarning)]
    assert len(reasons) == 4 and len(set(reasons)) == 4, reasons
    assert patch.sparge_calls == 3  # the masked calls: cpu masks are served (test_attn_mask.py)
    assert sorted(patch.fallbacks.values()) == [1, 1, 3, 3]
    for key, fragment in [("short", "min_seq_len=64"),
                          ("dtype", "torch.float64"), ("dropout", "dropout_p"),
                          ("grad", "inference-only")]:
        assert any(fragment in r for r in reasons), (key, reasons)
    assert masked.shape == q.shape and not torch.isnan(masked).any()
    # The fallback is PyTorch's own SDPA, bit for bit, and keeps autograd.
    assert torch.equal(small, torch_sdpa(*short))
    assert torch.equal(wide, torch_sdpa(q.double(), k.double(), v.double()))
    torch.manual_seed(0)
    assert torch.equal(dropped, torch_sdpa(q, k, v, dropout_p=0.5))
    trained.sum().backward()
    assert grad_q.grad is not None


def test_several_batch_dims_run_sparge():
    """SDPA takes [batch..., heads, tokens, head_dim]: q, k and v with the same batch dims run
    Sparge with those dims flattened into one (GQA on the heads axis); a mask on such inputs
    falls back."""
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(2, 3, 4, 150, 32, generator=gen)
    k, v = (torch.randn(2, 3, 2, 150, 32, generator=gen) for _ in range(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sparge.patch_sdpa(min_seq_len=0, **dense_options()) as patch:
            got = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            masked = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 2),
                                                    v.repeat_interleave(2, 2),
                                                    attn_mask=torch.ones(150, 150, dtype=torch.bool))
    assert patch.sparge_calls == 1 and sum(patch.fallbacks.values()) == 1, patch.fallbacks
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True,
                                              enable_gqa=True)
    assert got.shape == q.shape
    assert_close(got, expected, atol=1e-5)
    assert masked.shape == q.shape
    reasons = [str(w.message) for w in caught if issubclass(w.category, sparge.SpargeFallbackWarning)]
    assert any("more than one batch dim" in r for r in reasons), reasons


@pytest.mark.parametrize("shape_q,shape_kv", [
    ((2, 4, 150, 32), (1, 4, 150, 32)),        # k and v broadcast along the batch
    ((1, 4, 150, 32), (3, 4, 150, 32)),        # q broadcast: the output has k's batch
    ((2, 150, 32), (1, 150, 32)),              # 3-D
    ((2, 3, 4, 150, 32), (1, 3, 4, 150, 32)),  # several batch dims
    ((2, 4, 150, 32), (2, 1, 150, 32)),        # one key head for every query head, no enable_gqa
])
def test_broadcast_batch_and_heads_run_sparge(shape_q, shape_kv):
    """Shapes SDPA broadcasts (batch dims; a single key/value head against several query
    heads) run Sparge with SDPA's result, where they used to raise Sparge's batch error or fall
    back silently."""
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(shape_q, generator=gen)
    k, v = (torch.randn(shape_kv, generator=gen) for _ in range(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", sparge.SpargeFallbackWarning)
        with sparge.patch_sdpa(min_seq_len=0, **dense_options()) as patch:
            got = F.scaled_dot_product_attention(q, k, v)
    assert patch.sparge_calls == 1 and patch.fallbacks == {}
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert got.shape == expected.shape
    assert_close(got, expected, atol=1e-5)


def test_scales_sparge_cannot_take_fall_back():
    """SDPA takes any scale; Sparge's kernels need a finite scale > 0. A zero (uniform
    attention), negative or NaN scale runs PyTorch's SDPA with a warning naming the scale,
    where it used to raise Sparge's ValueError inside the patch."""
    q, k, v = make_qkv(seq_q=200, head_dim=32, seed=7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sparge.patch_sdpa(min_seq_len=0) as patch:
            got = [F.scaled_dot_product_attention(q, k, v, scale=s) for s in (0.0, -0.5, math.nan)]
            positive = F.scaled_dot_product_attention(q, k, v, scale=0.5)
    assert patch.sparge_calls == 1 and sum(patch.fallbacks.values()) == 3
    reasons = [str(w.message) for w in caught if issubclass(w.category, sparge.SpargeFallbackWarning)]
    assert len(reasons) == 3 and all("finite scale > 0" in r for r in reasons), reasons
    torch_sdpa = F.scaled_dot_product_attention
    assert torch.equal(got[0], torch_sdpa(q, k, v, scale=0.0))
    assert torch.equal(got[1], torch_sdpa(q, k, v, scale=-0.5))
    assert got[2].isnan().all()
    assert positive.shape == q.shape


def test_torch_errors_pass_through():
    q, k, v = make_qkv(heads_q=4, heads_kv=2, seq_q=300, head_dim=32)
    with sparge.patch_sdpa():
        with pytest.raises(RuntimeError):  # GQA without enable_gqa is PyTorch's shape error
            F.scaled_dot_product_attention(q, k, v)


def test_patch_rejects_unknown_options():
    with pytest.raises(TypeError, match=r"unknown Sparge option\(s\) \['cdf'\]"):
        sparge.patch_sdpa(cdf=0.9)
    with pytest.raises(ValueError, match="min_seq_len must be an int >= 0"):
        sparge.patch_sdpa(min_seq_len=-1)
    # Checked where the patch is written, not at the model's first attention call.
    with pytest.raises(ValueError, match=r"select_value \(cdf_threshold\) must be in"):
        sparge.patch_sdpa(cdf_threshold=2.0)
    with pytest.raises(ValueError, match="block_q must be one of 16, 32, 64, 128, 256, got 0"):
        sparge.patch_sdpa(block_q=0)
    with pytest.raises(ValueError, match=r"pv_threshold\[1\] must be in \[0, inf\]"):
        sparge.patch_sdpa(pv_threshold=torch.tensor([1.0, -1.0]))


@pytest.mark.parametrize("shape_q,shape_k", [
    ((0, 2, 300, 32), (0, 2, 300, 32)),  # batch 0
    ((1, 2, 0, 32), (1, 2, 300, 32)),    # no query
    ((1, 2, 300, 32), (1, 2, 0, 32)),    # no key: SDPA gives zeros
])
def test_patched_sdpa_on_empty_tensors_matches_torch(shape_q, shape_k):
    # Used to raise ("q.batch must be >= 1") where SDPA returns an empty tensor.
    q, k = torch.randn(shape_q), torch.randn(shape_k)
    v = torch.randn(shape_k)
    expected = F.scaled_dot_product_attention(q, k, v)
    with sparge.patch_sdpa(min_seq_len=0) as patch:
        got = F.scaled_dot_product_attention(q, k, v)
    assert patch.sparge_calls == 1 and patch.fallbacks == {}
    assert got.shape == expected.shape and torch.equal(got, expected)
    out, stats = sparge.attention(q, k, v, return_stats=True)
    assert torch.equal(out, expected) and stats.lse.shape == q.shape[:3]


def test_multihead_attention_fast_path_goes_through_the_patch():
    # nn.MultiheadAttention in eval mode takes PyTorch's fused fast path, which calls no SDPA:
    # it used to bypass the patch silently.
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    x = torch.randn(2, 300, 64)
    with torch.no_grad():
        expected, _ = mha(x, x, x, need_weights=False)
        fast_path = torch.backends.mha.get_fastpath_enabled()
        calls = []
        with sparge.patch_sdpa(on_call=calls.append, **dense_options()) as patch:
            got, _ = mha(x, x, x, need_weights=False)
            with pytest.warns(sparge.SpargeFallbackWarning, match="need_weights=True"):
                _, weights = mha(x, x, x)
        assert torch.backends.mha.get_fastpath_enabled() == fast_path  # restored
    assert patch.sparge_calls == 1 and weights.shape == (2, 300, 300)
    assert_close(got, expected, atol=1e-5)
    # The hook saw both: Sparge's call, and the one PyTorch served for the weights.
    assert [(c.impl, c.batch, c.heads_q, c.seq_q, c.seq_k, c.head_dim) for c in calls] == \
        [("sparge", 2, 4, 300, 300, 16), ("sdpa", 2, 4, 300, 300, 16)]
    assert "need_weights=True" in calls[1].reason


def test_import_sparge_makes_workloads_available():
    # `import sparge` alone must expose sparge.workloads (it used to need its own import).
    import subprocess
    import sys
    code = ("import sparge; w = sparge.workloads.random_gaussian(heads_q=1, seq_q=8, head_dim=4); "
            "print(w.q.shape)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 1, 8, 4])" in result.stdout


def test_cuda_dense_masks_go_to_sparge_only_with_options_it_takes():
    # patch.py's side of the CUDA dense-mask path's refusals (src/cuda/dispatch.cu,
    # check_dense_mask): with options that path refuses, a cuda call with a dense mask falls back.
    from sparge import patch as sp
    q64, q256 = torch.zeros(1, 2, 8, 64), torch.zeros(1, 2, 8, 256)
    assert sp._cuda_takes_mask(q64, {}) and sp._cuda_takes_mask(q64, None)
    assert sp._cuda_takes_mask(q64, {"quantized": "int8"})
    assert sp._cuda_takes_mask(q64, {"estimate": "sampled_rows"})
    for options in ({"target_error": 0.05}, {"quantized": True}, {"quantized": "int8_fp8"}):
        assert not sp._cuda_takes_mask(q64, options), options
    assert not sp._cuda_takes_mask(q256, {})
