"""Shared fixtures: poisoned outputs, seeded inputs, the float64 reference, device markers."""
import math

import pytest
import torch

import sparge
from sparge import _C

# Both CPU backends must produce the same function (docs/method.md).
CPU_BACKENDS = ["reference", "cpu"]
HAS_CUDA = torch.cuda.is_available() and _C.cuda_device_count() > 0
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build")


@pytest.fixture(autouse=True)
def poison_outputs():
    """Every output starts as NaN, so an element a backend forgets to write fails the test."""
    _C._set_poison_outputs(True)
    yield
    _C._set_poison_outputs(False)


def make_qkv(batch=1, heads_q=2, heads_kv=None, seq_q=200, seq_k=None, head_dim=32,
             dtype=torch.float32, device="cpu", seed=0, layout="HND"):
    heads_kv = heads_kv or heads_q
    seq_k = seq_k or seq_q
    gen = torch.Generator().manual_seed(seed)

    def rand(heads, tokens):
        shape = (batch, heads, tokens, head_dim) if layout == "HND" else \
            (batch, tokens, heads, head_dim)
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)

    return rand(heads_q, seq_q), rand(heads_kv, seq_k), rand(heads_kv, seq_k)


def reference_attention(q, k, v, scale=None, token_mask=None, is_causal=False,
                        causal_align="top_left"):
    """Float64 attention [B, Hq, Nq, D] with GQA; rows that see no key give 0 (Sparge's rule)."""
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = scale * q @ k.transpose(-1, -2)
    allowed = torch.ones(scores.shape[-2:], dtype=torch.bool)
    if is_causal:
        nq, nk = scores.shape[-2:]
        offset = nk - nq if causal_align == "bottom_right" else 0
        allowed = torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + offset
    allowed = allowed.to(scores.device)
    if token_mask is not None:
        allowed = allowed & token_mask
    scores = scores.masked_fill(~allowed, -math.inf)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all -inf rows -> 0
    return probs @ v


def dense_options():
    """Options under which Sparge skips nothing: no block is self-similar, λ = inf."""
    return dict(sim_threshold=1.0, pv_threshold=math.inf)


def assert_close(actual, expected, atol, rtol=0.0):
    assert not torch.isnan(actual).any(), "output holds NaN (an unwritten element?)"
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)
