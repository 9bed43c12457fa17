"""The compact BlockMask (row_offsets: CSR rows, issue 14 item 1) in Python: conversions between
the padded and compact forms and FlashInfer-style CSR arrays keep the tiles; block_sparse_attention
gives bit for bit what the padded mask gives on both CPU backends (rows with spare slots too);
statistics agree; bad arrays get errors naming the argument; CUDA says it takes the padded form."""
import pytest
import torch

import sparge
from conftest import CPU_BACKENDS, make_qkv, requires_cuda

OPTIONS = dict(is_causal=True, causal_align="bottom_right", topk=0.4, sim_threshold=-1.0,
               block_q=32, block_k=16)


def predicted(q, k):
    return sparge.predict_block_mask(q, k, **OPTIONS)


def with_spare_slots(mask, spare):
    """The compact mask with `spare` junk slots after each row's blocks (never to be read)."""
    compact = mask.to_compact()
    rows = compact.counts.reshape(-1).tolist()
    pieces, offsets, at = [], [0], 0
    for r, count in enumerate(rows):
        start = int(compact.row_offsets[r])
        pieces += [compact.indices[start:start + count], torch.full((spare,), -9, dtype=torch.int32)]
        at += count + spare
        offsets.append(at)
    return sparge.BlockMask(compact.counts, torch.cat(pieces), seq_q=mask.seq_q, seq_k=mask.seq_k,
                            block_q=mask.block_q, block_k=mask.block_k, is_causal=mask.is_causal,
                            causal_align=mask.causal_align,
                            row_offsets=torch.tensor(offsets, dtype=torch.int64))


def test_conversions_keep_the_tiles():
    q, k, _ = make_qkv(batch=2, heads_q=3, seq_q=157, seq_k=203, seed=1)
    padded = predicted(q, k)
    assert not padded.is_compact
    dense = padded.to_dense()
    assert 0 < int(dense.sum()) < dense.numel()  # rows of different lengths
    compact = padded.to_compact()
    assert compact.is_compact and compact.indices.dim() == 1
    assert compact.indices.numel() == int(dense.sum())  # memory grows with the kept tiles
    assert torch.equal(compact.to_dense(), dense)
    assert torch.equal(compact.to_padded().to_dense(), dense)
    assert torch.equal(compact.to_padded().counts, padded.counts)
    assert torch.equal(with_spare_slots(padded, 3).to_dense(), dense)
    assert torch.equal(with_spare_slots(padded, 3).to_compact().indices, compact.indices)
    csr = sparge.BlockMask.from_csr(compact.row_offsets, compact.indices.long(), batch=2, heads=3,
                                    seq_q=157, seq_k=203, block_q=32, block_k=16, is_causal=True,
                                    causal_align="bottom_right")
    assert torch.equal(csr.to_dense(), dense) and torch.equal(csr.counts, padded.counts)
    assert compact.density == pytest.approx(padded.density)
    assert torch.equal(compact.band_hidden_pairs(), padded.band_hidden_pairs())
    assert torch.equal(compact.to_token_mask(), padded.to_token_mask())
    moved = compact.to("cpu")
    assert moved.is_compact and torch.equal(moved.to_dense(), dense)
    assert "compact" in repr(compact) and "padded" in repr(padded)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_block_sparse_attention_reads_it_as_the_padded_form(backend):
    q, k, v = make_qkv(batch=1, heads_q=4, heads_kv=2, seq_q=157, seq_k=203, seed=2,
                       dtype=torch.bfloat16)
    padded = predicted(q, k)
    want, want_stats = sparge.block_sparse_attention(q, k, v, padded, backend=backend,
                                                     pv_threshold=4.0, return_stats=True)
    assert not torch.isnan(want).any()
    for mask in (padded.to_compact(), with_spare_slots(padded, 2)):
        got, stats = sparge.block_sparse_attention(q, k, v, mask, backend=backend,
                                                   pv_threshold=4.0, return_stats=True)
        assert torch.equal(got, want)
        assert torch.equal(stats.lse, want_stats.lse)
        assert stats.sparsity == want_stats.sparsity
        assert stats.pv_skip_fraction == want_stats.pv_skip_fraction
        assert stats.lambda_skip_fraction == want_stats.lambda_skip_fraction


def test_bad_arrays_get_errors_naming_the_argument():
    q, k, v = make_qkv(heads_q=2, seq_q=96, seq_k=64)
    compact = predicted(q, k).to_compact()
    geometry = dict(seq_q=96, seq_k=64, block_q=32, block_k=16, is_causal=True,
                    causal_align="bottom_right")
    with pytest.raises(ValueError, match="indptr must be 1-D"):
        sparge.BlockMask.from_csr(compact.row_offsets[:-1], compact.indices, batch=1, heads=2,
                                  **geometry)
    with pytest.raises(ValueError, match="row_offsets must be int64"):
        sparge.BlockMask(compact.counts, compact.indices, row_offsets=compact.row_offsets.int(),
                         **geometry)
    with pytest.raises(ValueError, match="must be 1-D"):
        sparge.BlockMask(compact.counts, compact.indices[None], row_offsets=compact.row_offsets,
                         **geometry)
    bad = compact.row_offsets.clone()
    bad[0] = 1
    mask = sparge.BlockMask(compact.counts, compact.indices, row_offsets=bad, **geometry)
    with pytest.raises(ValueError, match=r"row_offsets\[-1\]|row_offsets\[0\] must be 0"):
        sparge.block_sparse_attention(q, k, v, mask)
    bad = compact.row_offsets.clone()
    bad[2] = bad[1] - 1
    mask = sparge.BlockMask(compact.counts, compact.indices, row_offsets=bad, **geometry)
    with pytest.raises(ValueError, match="nondecreasing"):
        sparge.block_sparse_attention(q, k, v, mask)
    wrong = compact.indices.clone()
    wrong[0] = 99
    mask = sparge.BlockMask(compact.counts, wrong, row_offsets=compact.row_offsets, **geometry)
    with pytest.raises(ValueError, match="strictly ascending"):
        sparge.block_sparse_attention(q, k, v, mask)
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        mask.to_dense()


@requires_cuda
def test_cuda_reads_the_compact_form_as_the_padded_one():
    q, k, v = make_qkv(heads_q=2, seq_q=256, seq_k=300, device="cuda", dtype=torch.bfloat16)
    mask = sparge.predict_block_mask(q, k, topk=0.5, sim_threshold=-1.0)
    assert 0.2 < mask.sparsity < 0.8  # rows of different lengths: the row starts matter
    out = sparge.block_sparse_attention(q, k, v, mask)
    assert not torch.isnan(out).any()
    assert torch.equal(sparge.block_sparse_attention(q, k, v, mask.to_compact()), out)
