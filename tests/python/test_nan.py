"""A NaN (or Inf) in q propagates as in F.scaled_dot_product_attention (docs/method.md, "Inputs
with NaN/Inf"): its row is NaN, every other row is finite and as without it. The expected NaN
pattern is SDPA's math backend in float64 on the CPU: PyTorch's CPU flash kernel, which SDPA
picks for some small shapes, returns zeros for a NaN q row instead.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import sparge
from conftest import CPU_BACKENDS, dense_options, make_qkv, requires_cuda

# Options: nothing skipped, and Stage 1 selecting (every finite block similar, TopCdf 0.3), in
# which the NaN block is non-similar and so kept whole.
OPTIONS = {"dense": dense_options(),
           "predicted": dict(sim_threshold=0.0, cdf_threshold=0.3, pv_threshold=math.inf)}


def sdpa_math(q, k, v, is_causal):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q.cpu().double(), k.cpu().double(),
                                              v.cpu().double(), is_causal=is_causal)


def check_nan_row(device, dtype, backend, is_causal, bad, options):
    q, k, v = make_qkv(heads_q=2, seq_q=300, head_dim=64, dtype=dtype, device=device, seed=4)
    clean = sparge.attention(q, k, v, is_causal=is_causal, backend=backend, **options)
    q[0, 1, 150, 5] = bad
    out = sparge.attention(q, k, v, is_causal=is_causal, backend=backend, **options)
    expected = sdpa_math(q, k, v, is_causal)
    assert expected[0, 1, 150].isnan().all() and expected.isnan().sum() == q.shape[-1]
    assert torch.equal(out.isnan().cpu(), expected.isnan()), "NaN pattern differs from SDPA's"
    others = torch.ones(q.shape[:3], dtype=torch.bool)
    others[0, 1, 150] = False
    if options is OPTIONS["dense"]:  # same mask with and without the NaN: rows unchanged
        assert torch.equal(out.cpu()[others], clean.cpu()[others])


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_in_q_cpu_matches_sdpa(backend, is_causal, bad, options):
    check_nan_row("cpu", torch.float32, backend, is_causal, bad, options)


@requires_cuda
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nan_in_q_cuda_matches_sdpa(dtype, is_causal, bad, options):
    check_nan_row("cuda", dtype, "auto", is_causal, bad, options)
