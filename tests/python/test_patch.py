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


def test_default_sdpa_runs_sparge():
    q, k, v = make_qkv(seq_q=300, head_dim=32, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback for a plain long call
        got = sparge.sdpa(q, k, v)
    assert_close(got, F.scaled_dot_product_attention(q, k, v), atol=0.05)


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
    assert len(reasons) == 5 and len(set(reasons)) == 5, reasons
    assert patch.sparge_calls == 0
    assert sorted(patch.fallbacks.values()) == [1, 1, 3, 3, 3]
    for key, fragment in [("attn_mask", "attn_mask"), ("short", "min_seq_len=64"),
                          ("dtype", "torch.float64"), ("dropout", "dropout_p"),
                          ("grad", "inference-only")]:
        assert any(fragment in r for r in reasons), (key, reasons)
    # The fallback is PyTorch's own SDPA, bit for bit, and keeps autograd.
    assert torch.equal(masked, torch_sdpa(q, k, v, attn_mask=mask))
    assert torch.equal(small, torch_sdpa(*short))
    assert torch.equal(wide, torch_sdpa(q.double(), k.double(), v.double()))
    torch.manual_seed(0)
    assert torch.equal(dropped, torch_sdpa(q, k, v, dropout_p=0.5))
    trained.sum().backward()
    assert grad_q.grad is not None


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
    q, k, v = make_qkv(seq_q=300, head_dim=32)
    with sparge.patch_sdpa(cdf_threshold=2.0):
        with pytest.raises(ValueError, match="cdf_threshold must be in"):
            F.scaled_dot_product_attention(q, k, v)
