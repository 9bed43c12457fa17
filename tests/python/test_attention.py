"""sparge.attention against the float64 reference / F.scaled_dot_product_attention, on CPU.

With sim_threshold=1 and pv_threshold=inf nothing is skipped, so Sparge must equal dense
attention up to float32 rounding; with skipping on, the result must equal the reference
restricted to the mask Sparge reports.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import sparge
from conftest import CPU_BACKENDS, assert_close, dense_options, make_qkv, reference_attention

ATOL32 = 1e-5  # float32 accumulation of the fast backend


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("seq_q,seq_k,head_dim", [(1, 1, 8), (200, 200, 32), (129, 300, 64),
                                                  (300, 65, 40)])
def test_dense_equals_sdpa_float64(backend, seq_q, seq_k, head_dim):
    q, k, v = make_qkv(seq_q=seq_q, seq_k=seq_k, head_dim=head_dim)
    out = sparge.attention(q, k, v, backend=backend, **dense_options())
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_close(out, expected, atol=ATOL32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("seq_q,seq_k", [(200, 200), (70, 333), (333, 70)])
def test_causal_top_left_equals_sdpa(backend, seq_q, seq_k):
    q, k, v = make_qkv(seq_q=seq_q, seq_k=seq_k, seed=1)
    out = sparge.attention(q, k, v, is_causal=True, backend=backend, **dense_options())
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    if seq_q > seq_k:  # SDPA keeps no row keyless here; top-left rows always see key 0
        assert expected.isfinite().all()
    assert_close(out, expected, atol=ATOL32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("seq_q,seq_k", [(70, 333), (333, 70), (128, 128)])
def test_causal_bottom_right_equals_reference(backend, seq_q, seq_k):
    q, k, v = make_qkv(seq_q=seq_q, seq_k=seq_k, seed=2)
    out = sparge.attention(q, k, v, is_causal=True, causal_align="bottom_right",
                           backend=backend, **dense_options())
    expected = reference_attention(q, k, v, is_causal=True, causal_align="bottom_right")
    assert_close(out, expected, atol=ATOL32)
    if seq_q > seq_k:  # the first seq_q - seq_k rows see no key: zeros by definition
        assert (out[:, :, :seq_q - seq_k] == 0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gqa_and_scale(backend):
    q, k, v = make_qkv(heads_q=6, heads_kv=2, seq_q=150, seq_k=190, head_dim=16, seed=3)
    out = sparge.attention(q, k, v, scale=0.3, backend=backend, **dense_options())
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.3,
                                              enable_gqa=True)
    assert_close(out, expected, atol=ATOL32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sdpa_keywords_port_unchanged(backend):
    """A call written for F.scaled_dot_product_attention (its keywords, dropout_p 0 and
    enable_gqa either way) gives the output of the same call without them."""
    q, k, v = make_qkv(heads_q=6, heads_kv=2, seq_q=150, seq_k=190, head_dim=16, seed=4)
    plain = sparge.attention(q, k, v, is_causal=True, backend=backend)
    for enable_gqa in (True, False):
        out = sparge.attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True, scale=None,
                               enable_gqa=enable_gqa, backend=backend)
        assert torch.equal(out, plain)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sdpa_positional_call_ports_unchanged(backend):
    """F.scaled_dot_product_attention(q, k, v, mask, 0.0, False, scale=0.2) with its name
    changed: the positional mask, dropout_p and is_causal land where SDPA puts them."""
    q, k, v = make_qkv(heads_q=4, heads_kv=4, seq_q=130, seq_k=170, head_dim=16, seed=6)
    mask = torch.rand(1, 4, 130, 170, generator=torch.Generator().manual_seed(1)) > 0.3
    by_name = sparge.attention(q, k, v, attn_mask=mask, scale=0.2, backend=backend,
                               **dense_options())
    out = sparge.attention(q, k, v, mask, 0.0, False, scale=0.2, backend=backend, **dense_options())
    assert torch.equal(out, by_name)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), mask, 0.0, False,
                                              scale=0.2)
    assert_close(out, expected, atol=ATOL32)
    causal = sparge.attention(q, k, v, None, 0.0, True, backend=backend, **dense_options())
    assert torch.equal(causal, sparge.attention(q, k, v, is_causal=True, backend=backend,
                                                **dense_options()))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("head_dim,value_dim", [(24, 16), (16, 40)])
def test_value_head_dim_of_its_own_as_sdpa(backend, head_dim, value_dim):
    """SDPA takes v with its own head dim Ev (MLA-style models: DeepSeek's E 192, Ev 128): the
    output has Ev channels, the scale stays 1/sqrt(E), and the mask Stage 1 picks is q and k's
    alone (v's width changes nothing that decides a tile)."""
    q, k, _ = make_qkv(heads_q=4, heads_kv=2, seq_q=150, seq_k=210, head_dim=head_dim, seed=8)
    v = torch.randn(1, 2, 210, value_dim, generator=torch.Generator().manual_seed(9))
    for causal in (False, True):
        out = sparge.attention(q, k, v, is_causal=causal, backend=backend, **dense_options())
        expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                  is_causal=causal, enable_gqa=True)
        assert out.shape == (1, 4, 150, value_dim)
        assert_close(out, expected, atol=ATOL32)
    # With skipping on: the same mask as with v of q's width, and the reference on that mask.
    out, stats = sparge.attention(q, k, v, cdf_threshold=0.5, sim_threshold=-1.0,
                                  pv_threshold=math.inf, backend=backend, return_stats=True)
    _, same_width = sparge.attention(q, k, torch.randn(1, 2, 210, head_dim), cdf_threshold=0.5,
                                     sim_threshold=-1.0, pv_threshold=math.inf, backend=backend,
                                     return_stats=True)
    assert torch.equal(stats.block_mask.to_dense(), same_width.block_mask.to_dense())
    assert 0.0 < stats.sparsity < 1.0
    expected = reference_attention(q, k, v, token_mask=stats.block_mask.to_token_mask())
    assert_close(out, expected, atol=ATOL32)
    assert torch.equal(sparge.block_sparse_attention(q, k, v, stats.block_mask, backend=backend,
                                                     pv_threshold=math.inf), out)
    with pytest.raises(ValueError, match="k.head_dim must equal q.head_dim"):
        sparge.attention(q, k[..., :8], v, backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nhd_views_need_no_copy(backend):
    q, k, v = make_qkv(seq_q=140, layout="NHD", seed=4)  # [B, N, H, D] contiguous
    out = sparge.attention(q, k, v, layout="NHD", backend=backend, **dense_options())
    expected = F.scaled_dot_product_attention(*(t.transpose(1, 2).double() for t in (q, k, v)))
    assert out.shape == q.shape and out.is_contiguous()  # returned in the caller's layout
    assert_close(out.transpose(1, 2), expected, atol=ATOL32)
    # HND views of NHD storage (what attention modules produce) give the same result.
    out_hnd = sparge.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                               backend=backend, **dense_options())
    assert out_hnd.stride() == q.transpose(1, 2).stride()
    assert_close(out_hnd, expected, atol=ATOL32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_half_precision_on_cpu(backend):
    q, k, v = make_qkv(seq_q=130, dtype=torch.bfloat16, seed=5)
    out = sparge.attention(q, k, v, backend=backend, **dense_options())
    expected = reference_attention(q, k, v)
    naive = F.scaled_dot_product_attention(q, k, v)  # same-dtype PyTorch, for the error bar
    err = (out.double() - expected).abs().max().item()
    assert out.dtype == torch.bfloat16 and not out.isnan().any()
    assert err <= 2 * (naive.double() - expected).abs().max().item() + 1e-3


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("is_causal", [False, True])
def test_sparse_equals_reference_on_its_mask(backend, is_causal):
    # Smooth, clustered keys make similar blocks, so Stage 1 really drops tiles.
    q, k, v = make_qkv(heads_q=2, seq_q=512, seq_k=512, head_dim=32, seed=6)
    k = k * 0.2 + torch.linspace(-2, 2, 512).view(1, 1, 512, 1)
    q = q * 0.2 + torch.linspace(-2, 2, 512).view(1, 1, 512, 1)
    out, stats = sparge.attention(q, k, v, is_causal=is_causal, sim_threshold=0.3,
                                  cdf_threshold=0.5, pv_threshold=math.inf, backend=backend,
                                  return_stats=True)
    assert 0.0 < stats.sparsity < 1.0, "the workload must make Stage 1 skip some tiles"
    expected = reference_attention(q, k, v, token_mask=stats.block_mask.to_token_mask(),
                                   is_causal=is_causal)
    assert_close(out, expected, atol=ATOL32)
    # λ = inf skips nothing, except that a row group that causality masks entirely in a kept
    # tile counts as skipped (docs/method.md): count those groups independently.
    dense = stats.block_mask.to_dense()
    kept_tiles = dense.sum().item()
    masked_groups = 0
    if is_causal:
        for b, h, i, j in dense.nonzero().tolist():
            for first in range(i * 128, min(512, (i + 1) * 128), 16):
                masked_groups += min(first + 15, 511) < j * 64
    visited, skipped = stats.pv_counters.sum(0).tolist()
    assert visited == kept_tiles * 128 // 16 and skipped == masked_groups


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_lse_matches_logsumexp(backend):
    q, k, v = make_qkv(seq_q=100, seq_k=170, seed=7)
    _, stats = sparge.attention(q, k, v, backend=backend, return_stats=True, **dense_options())
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    assert_close(stats.lse, torch.logsumexp(scores, dim=-1), atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_pv_threshold_skips_and_stays_close(backend):
    q, k, v = make_qkv(seq_q=256, seq_k=512, seed=8)
    # Every query matches the first key tile strongly, so later tiles fall far below the
    # running max and whole row groups skip them.
    u = torch.ones(32) / math.sqrt(32)
    q = q + 10 * u
    k[:, :, :64] += 10 * u
    exact = sparge.attention(q, k, v, backend=backend, **dense_options())
    out, stats = sparge.attention(q, k, v, backend=backend, sim_threshold=1.0, pv_threshold=4.0,
                                  return_stats=True)
    assert stats.pv_skip_fraction > 0.0
    # Dropped weights are < 2^-4 of each row max: bounded change, not a different function.
    assert (out - exact).abs().max().item() < 0.25


def test_token_grid_restores_order():
    q, k, v = make_qkv(seq_q=2 * 8 * 9 + 5, head_dim=16, seed=9)  # 5 text tokens after the grid
    plain = sparge.attention(q, k, v, backend="reference", **dense_options())
    reordered = sparge.attention(q, k, v, backend="reference", token_grid=(2, 8, 9),
                                 **dense_options())
    # Dense attention is permutation-equivariant: only rounding may differ.
    assert_close(reordered, plain, atol=ATOL32)
    shifted = sparge.attention(q, k, v, backend="reference", token_grid=(2, 8, 9),
                               grid_offset=5, **dense_options())
    assert_close(shifted, plain, atol=ATOL32)


def test_token_grid_changes_the_blocks():
    # A 1x16x16 grid whose features depend on the 2-D position: Hilbert blocks are 2-D patches,
    # so Stage 1 sees other blocks than in row-major order.
    h = w = 16
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    feats = torch.stack([torch.sin(ys / 3.0 + c) + torch.cos(xs / 3.0 - c) for c in range(16)], -1)
    q = feats.reshape(1, 1, h * w, 16).float()
    row_major = sparge.attention(q, q, q, backend="reference", sim_threshold=0.5, topk=0.3,
                                 block_q=32, block_k=32, return_stats=True)[1].block_mask
    hilbert = sparge.attention(q, q, q, backend="reference", sim_threshold=0.5, topk=0.3,
                               block_q=32, block_k=32, token_grid=(1, h, w),
                               return_stats=True)[1].block_mask
    assert not torch.equal(row_major.to_dense(), hilbert.to_dense())


def test_per_head_thresholds_equal_separate_calls():
    q, k, v = make_qkv(heads_q=3, seq_q=300, seed=10)
    k = k * 0.3 + torch.linspace(-1, 1, 300).view(1, 1, 300, 1)
    sims, cdfs = [1.0, 0.2, -1.0], torch.tensor([0.9, 0.6, 0.3])
    out, stats = sparge.attention(q, k, v, sim_threshold=torch.tensor(sims), cdf_threshold=cdfs,
                                  pv_threshold=[math.inf, 8.0, 2.0], backend="reference",
                                  return_stats=True)
    for h in range(3):
        one, one_stats = sparge.attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1],
                                          sim_threshold=sims[h], cdf_threshold=float(cdfs[h]),
                                          pv_threshold=[math.inf, 8.0, 2.0][h],
                                          backend="reference", return_stats=True)
        assert torch.equal(out[:, h:h + 1], one)
        assert torch.equal(stats.block_mask.to_dense()[:, h:h + 1], one_stats.block_mask.to_dense())
    densities = [stats.block_mask.to_dense()[0, h].float().mean().item() for h in range(3)]
    assert densities[0] == 1.0 and densities[2] < densities[0]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_quantized_modes_by_name(backend):
    # quantized=True is "int8_fp8"; "int8" keeps P and V at the inputs' precision, so on random
    # inputs its error against exact attention is well below int8_fp8's (FP8 V and P), and it is
    # not exact either (INT8 Q and K).
    q, k, v = make_qkv(heads_q=2, seq_q=300, seq_k=300, head_dim=64, seed=5)
    exact = sparge.attention(q, k, v, backend=backend, **dense_options())

    def err(out):
        return ((out - exact).abs().sum() / exact.abs().sum()).item()

    fp8 = sparge.attention(q, k, v, quantized=True, backend=backend, **dense_options())
    assert torch.equal(fp8, sparge.attention(q, k, v, quantized="int8_fp8", backend=backend,
                                             **dense_options()))
    int8 = sparge.attention(q, k, v, quantized="int8", backend=backend, **dense_options())
    assert 1e-4 < err(int8) <= 0.02, err(int8)
    assert err(int8) < 0.5 * err(fp8), (err(int8), err(fp8))
    _, stats = sparge.attention(q, k, v, quantized="int8", backend=backend, return_stats=True,
                                **dense_options())
    _, exact_stats = sparge.attention(q, k, v, backend=backend, return_stats=True,
                                      **dense_options())
    torch.testing.assert_close(stats.lse, exact_stats.lse, atol=2e-2, rtol=0)
