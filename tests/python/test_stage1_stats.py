"""Stage 1's per-head stats in SparseStats (select_value, error_estimate, forced_tiles): what the
C++ core's Stage1Stats reports, on the CPU (tests/cuda covers the GPU's values)."""
import math

import torch

import sparge
import sparge.workloads as wl
from conftest import make_qkv


def test_the_gate_forcing_every_tile_is_reported():
    # i.i.d. inputs: no block is similar to itself at the default sim_threshold 0.6, so the
    # gate forces every tile whatever cdf_threshold says; the stats say so instead of silence.
    q, k, v = make_qkv(batch=2, heads_q=3, seq_q=300, head_dim=32, seed=3)
    _, stats = sparge.attention(q, k, v, cdf_threshold=0.5, return_stats=True)
    allowed = int(stats.block_mask.allowed_key_blocks().sum())
    assert stats.forced_tiles.shape == (2, 3) and stats.forced_tiles.dtype == torch.int64
    assert (stats.forced_tiles == allowed).all()
    assert torch.allclose(stats.forced_fraction, torch.ones(2, 3, dtype=torch.float64))
    assert torch.equal(stats.select_value, torch.full((2, 3), 0.5))
    assert torch.isnan(stats.error_estimate).all()  # target_error is off
    assert stats.sparsity == 0.0

    _, free = sparge.attention(q, k, v, cdf_threshold=0.5, sim_threshold=-1.0, return_stats=True)
    assert (free.forced_tiles == 0).all()
    assert free.sparsity > 0.0  # the selection now decides


def test_per_head_selection_values():
    q, k, v = make_qkv(heads_q=4, heads_kv=2, seq_q=256, head_dim=32, seed=4)
    cdf = torch.tensor([0.5, 0.7, 0.9, 1.0])
    _, stats = sparge.attention(q, k, v, cdf_threshold=cdf, sim_threshold=-1.0,
                                return_stats=True)
    assert torch.equal(stats.select_value, cdf.expand(1, 4))
    _, topk = sparge.attention(q, k, v, topk=0.25, sim_threshold=-1.0, return_stats=True)
    assert torch.equal(topk.select_value, torch.full((1, 4), 0.25))


def test_error_target_reports_its_choice_and_meets_it():
    w = wl.language_like(heads_q=4, heads_kv=2, tokens=1024, head_dim=64, seed=5)
    target = 0.05
    out, stats = sparge.attention(w.q, w.k, w.v, is_causal=True, target_error=target,
                                  sim_threshold=-1.0, return_stats=True)
    ref = torch.nn.functional.scaled_dot_product_attention(
        w.q.double(), w.k.double().repeat_interleave(2, 1), w.v.double().repeat_interleave(2, 1),
        is_causal=True)
    assert stats.sparsity > 0.3
    for h in range(4):
        tau, est = float(stats.select_value[0, h]), float(stats.error_estimate[0, h])
        measured = float((out[0, h] - ref[0, h]).abs().sum() / ref[0, h].abs().sum())
        assert 0.5 <= tau < 1.0, (h, tau)  # one of the candidates, not "keep all"
        assert not math.isnan(est) and 0.0 < est * 1.1 <= target + 1e-6, (h, est)
        assert measured <= 1.5 * target, (h, measured, est)
    assert (stats.forced_tiles == 0).all()


def test_block_sparse_attention_has_no_stage1_stats():
    q, k, v = make_qkv(seq_q=200, head_dim=32, seed=6)
    mask = sparge.predict_block_mask(q, k)
    _, stats = sparge.block_sparse_attention(q, k, v, mask, return_stats=True)
    assert stats.select_value is None and stats.forced_tiles is None
    assert stats.forced_fraction is None


def test_stats_are_empty_tensors_in_the_op_without_extras():
    q, k, v = make_qkv(seq_q=130, head_dim=32, seed=7)
    outs = torch.ops.sparge.attention(q, k, v)
    assert outs[5].shape == (2, 0, 0) and outs[6].shape == (0, 0)
