"""sparge.workloads: the C++ generators (docs/workloads.md) seen from Python."""
import math

import pytest
import torch

import sparge
from sparge import workloads


def test_video_grid_shapes_grid_and_determinism():
    a = workloads.video_grid(heads=3, grid=(4, 6, 8), head_dim=32, seed=5)
    b = workloads.video_grid(heads=3, grid=(4, 6, 8), head_dim=32, seed=5)
    c = workloads.video_grid(heads=3, grid=(4, 6, 8), head_dim=32, seed=6)
    assert a.name == "video-grid" and a.grid == (4, 6, 8) and a.token_grid == (4, 6, 8)
    assert not a.causal
    assert a.shape == dict(batch=1, heads_q=3, heads_kv=3, seq_q=192, seq_k=192, head_dim=32)
    for x in (a.q, a.k, a.v):
        assert x.dtype == torch.float32 and x.is_contiguous() and torch.isfinite(x).all()
    for x, y, z in ((a.q, b.q, c.q), (a.k, b.k, c.k), (a.v, b.v, c.v)):
        assert torch.equal(x, y)          # same seed, same bits
        assert not torch.equal(x, z)      # another seed changes every tensor


def test_more_heads_leave_the_existing_heads_unchanged():
    # Each head draws from its own stream (docs/workloads.md: Determinism).
    few = workloads.language_like(heads_q=2, heads_kv=1, tokens=300, head_dim=16, seed=1)
    many = workloads.language_like(heads_q=4, heads_kv=2, tokens=300, head_dim=16, seed=1)
    assert torch.equal(many.k[:, :1], few.k) and torch.equal(many.v[:, :1], few.v)
    assert torch.equal(many.q[:, :2], few.q)


def test_language_like_is_causal_with_sinks():
    w = workloads.language_like(heads_q=4, heads_kv=2, tokens=1024, head_dim=64, seed=0)
    assert w.name == "llm-like" and w.causal and w.grid is None
    assert w.shape["heads_q"] == 4 and w.shape["heads_kv"] == 2
    # Every head puts a large share of its attention on the 4 sink keys (docs/workloads.md
    # measures 0.23-0.34 on every 7th row), each query head reading its GQA group's kv head.
    causal = torch.arange(1024)[None, :] > torch.arange(1024)[:, None]
    for h in range(4):
        scores = w.q[0, h].double() @ w.k[0, h // 2].double().T / math.sqrt(64)
        probs = torch.softmax(scores.masked_fill(causal, -math.inf), dim=-1)
        assert probs[::7, :4].sum(dim=-1).mean() > 0.1


def test_random_gaussian_is_standard_normal():
    w = workloads.random_gaussian(heads_q=2, seq_q=512, seq_k=384, head_dim=64, seed=3)
    assert w.shape == dict(batch=1, heads_q=2, heads_kv=2, seq_q=512, seq_k=384, head_dim=64)
    assert abs(w.q.mean().item()) < 0.02 and abs(w.q.std().item() - 1) < 0.02
    assert not w.causal and w.grid is None


def test_video_grid_is_sparse_in_hilbert_order():
    # The workload's purpose: Stage 1 finds a sparse mask in Hilbert order, not row-major.
    w = workloads.video_grid(heads=4, grid=(8, 16, 16), head_dim=64, seed=0)
    # SpargeAttn's rule (the pooled map behind the gate at 0.6), whose masks the order is for; the
    # defaults' sampled rows and lower gate find sparsity in either order.
    rule = dict(estimate="pooled", sim_threshold=0.6)
    _, hilbert = sparge.attention(w.q, w.k, w.v, token_grid=w.token_grid, return_stats=True, **rule)
    _, rows = sparge.attention(w.q, w.k, w.v, return_stats=True, **rule)
    assert hilbert.sparsity > 0.5 and hilbert.sparsity > rows.sparsity + 0.2


@pytest.mark.parametrize("call, message", [
    (lambda: workloads.video_grid(grid=(0, 4, 4)), "frames must be a positive int"),
    (lambda: workloads.video_grid(grid=(4, 4)), "grid must be"),
    (lambda: workloads.language_like(heads_q=3, heads_kv=2), "multiple of heads_kv"),
    (lambda: workloads.random_gaussian(head_dim=0), "head_dim must be a positive int"),
    (lambda: workloads.random_gaussian(seed=-1), "seed must be"),
])
def test_bad_arguments_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
