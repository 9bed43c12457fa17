"""sparge.KeyBlocks (Stage 1's key side kept beside a KV cache, issue 14 item 5) in Python: built on
all keys, attention(key_blocks=...) equals the call without them bit for bit (output, mask,
Stage-1 stats; both CPU backends, GQA, NHD); Stage 1 takes the key side from the blocks; a
decode loop that appends a key per step equals one append per step; errors name the argument."""
import pytest
import torch

import sparge
from conftest import CPU_BACKENDS, make_qkv, requires_cuda

# The pooled map, which key blocks serve: the calls without them are compared with theirs (the
# default estimate, auto, samples rows in a call with a full query block).
OPTIONS = dict(is_causal=True, causal_align="bottom_right", topk=0.3, sim_threshold=0.3,
               pv_threshold=6.0, estimate="pooled")


def structured(batch, heads, tokens, head_dim, run, seed):
    """Rows along one of 8 directions per run of `run` rows (self-similar blocks), every fifth
    run strong noise (blocks the similarity gate forces), [B, H, N, D] float32."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(batch, heads, tokens, head_dim, generator=gen)
    dirs = torch.randn(8, head_dim, generator=gen)
    runs = torch.arange(tokens) // run
    noise = (runs % 5 == 4)
    x[:, :, ~noise] += 2.0 * dirs[(runs[~noise] % 8)]
    x[:, :, noise] *= 20.0
    return x


def cache(tokens=1000, dtype=torch.bfloat16):
    k = structured(2, 2, tokens, 32, 64, 5).to(dtype)
    v = torch.randn(2, 2, tokens, 32, generator=torch.Generator().manual_seed(6)).to(dtype)
    return k, v


def queries(n, seed, dtype=torch.bfloat16):
    return structured(2, 4, n, 32, 128, seed).to(dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("nq", [1, 37])
def test_built_on_all_keys_equals_the_call_without(backend, nq):
    k, v = cache()
    q = queries(nq, 10 + nq)
    blocks = sparge.KeyBlocks.build(k)
    assert blocks.tokens == 1000 and blocks.max_tokens == 1024
    # What they hold: k's mean, and channel-major the pooled rows of the smoothed key blocks.
    assert blocks.pooled.shape == (2, 2, 32, 16) and blocks.sim.shape == (2, 2, 16)
    torch.testing.assert_close(blocks.mean, k.double().mean(2), atol=1e-12, rtol=0)
    for j in (0, 7, 15):  # 15: the tail block of 40 keys
        rows = k[:, :, 64 * j:64 * (j + 1)].double() - blocks.mean[:, :, None]
        torch.testing.assert_close(blocks.pooled[..., j], rows.mean(2), atol=1e-12, rtol=0)
    want, want_stats = sparge.attention(q, k, v, backend=backend, return_stats=True, **OPTIONS)
    got, stats = sparge.attention(q, k, v, key_blocks=blocks, backend=backend,
                                  return_stats=True, **OPTIONS)
    assert not torch.isnan(want).any()
    assert torch.equal(got, want)
    assert torch.equal(stats.block_mask.to_dense(), want_stats.block_mask.to_dense())
    assert torch.equal(stats.forced_tiles, want_stats.forced_tiles)
    assert want_stats.sparsity > 0.2  # tiles were skipped: the mask decided something
    # NHD views of the same cache: the same blocks and output.
    nhd = sparge.KeyBlocks.build(k.transpose(1, 2), layout="NHD")
    assert torch.equal(nhd.pooled, blocks.pooled) and torch.equal(nhd.sim, blocks.sim)
    out_nhd = sparge.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                               layout="NHD", key_blocks=nhd, backend=backend, **OPTIONS)
    assert torch.equal(out_nhd.transpose(1, 2), want)


def test_stage1_takes_the_key_side_from_the_blocks():
    k, v = cache()
    other = structured(2, 2, 1000, 32, 64, 77).to(torch.bfloat16)
    q = queries(37, 9)
    _, stats = sparge.attention(q, k, v, key_blocks=sparge.KeyBlocks.build(other),
                                return_stats=True, **OPTIONS)
    own = sparge.predict_block_mask(q, k, **{n: OPTIONS[n] for n in ("is_causal", "causal_align",
                                                                     "topk", "sim_threshold")})
    theirs = sparge.predict_block_mask(q, other, **{n: OPTIONS[n] for n in (
        "is_causal", "causal_align", "topk", "sim_threshold")})
    assert torch.equal(stats.block_mask.to_dense(), theirs.to_dense())
    assert not torch.equal(stats.block_mask.to_dense(), own.to_dense())


def test_a_decode_loop_equals_one_append_per_step():
    k, v = cache(1100)
    running = sparge.KeyBlocks.build(k[:, :, :500], max_tokens=1100)
    for n in range(501, 511):
        running.append(k[:, :, :n])
        fresh = sparge.KeyBlocks.build(k[:, :, :500], max_tokens=1100)
        fresh.append(k[:, :, :n])
        assert torch.equal(running.pooled, fresh.pooled) and torch.equal(running.sim, fresh.sim)
        q = queries(1, 1000 + n)
        out = sparge.attention(q, k[:, :, :n], v[:, :, :n], key_blocks=running, **OPTIONS)
        assert not torch.isnan(out).any()
        assert torch.equal(out, sparge.attention(q, k[:, :, :n], v[:, :, :n], key_blocks=fresh,
                                                 **OPTIONS))
    # A rebuild takes the current mean: the call without key blocks again, bit for bit.
    running.rebuild(k[:, :, :510])
    q = queries(3, 5)
    assert torch.equal(sparge.attention(q, k[:, :, :510], v[:, :, :510], key_blocks=running,
                                        **OPTIONS),
                       sparge.attention(q, k[:, :, :510], v[:, :, :510], **OPTIONS))


def test_nothing_skipped_matches_sdpa():
    k, v = cache(700, dtype=torch.float32)
    blocks = sparge.KeyBlocks.build(k)
    q = queries(5, 4, dtype=torch.float32)
    out = sparge.attention(q, k, v, key_blocks=blocks, is_causal=True, causal_align="bottom_right",
                           topk=1.0, pv_threshold=float("inf"))
    # SDPA with the bottom-right causal mask of 5 new rows at the end of 700 keys (GQA repeated).
    rows = torch.arange(695, 700)[:, None]
    mask = torch.arange(700)[None, :] <= rows
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double().repeat_interleave(2, 1), v.double().repeat_interleave(2, 1),
        attn_mask=mask)
    err = ((out.double() - ref).abs().sum() / ref.abs().sum()).item()
    print(f"key blocks, nothing skipped vs SDPA (float64): rel L1 {err:.2e}")
    assert err < 1e-5


@pytest.mark.parametrize("layout", ["HND", "NHD"])
def test_predict_from_the_blocks_alone_equals_the_plain_prediction(layout):
    """predict_block_mask(q, None, key_blocks=kb) reads no key: the mask of (q, k)."""
    k, _ = cache()
    kb = sparge.KeyBlocks.build(k)
    opts = dict(OPTIONS)
    opts.pop("pv_threshold")
    for nq in (1, 300):
        q = queries(nq, 400 + nq)
        want = sparge.predict_block_mask(q, k, **opts)
        qq = q.transpose(1, 2) if layout == "NHD" else q
        got = sparge.predict_block_mask(qq, None, key_blocks=kb, layout=layout, **opts)
        assert torch.equal(got.to_dense(), want.to_dense())
        assert (got.seq_q, got.seq_k) == (nq, 1000)
        # k given as any tensor of the keys' shape (here: zeros) gives the same: it is not read
        zeros = sparge.predict_block_mask(q, torch.zeros_like(k), key_blocks=kb, **opts)
        assert torch.equal(zeros.to_dense(), want.to_dense())
    assert want.sparsity > 0.2  # the selection skips tiles: the comparison is not trivial


def test_blocks_pooled_with_a_given_mean_and_assembled_from_parts():
    """KeyBlocks.build(part, mean=whole mean) gives the whole blocks of that part, bit for bit;
    from_tensors assembles them; the prediction from the assembled blocks is the whole one's."""
    k, _ = cache()
    whole = sparge.KeyBlocks.build(k)
    head = sparge.KeyBlocks.build(k[:, :, :512], mean=whole.mean)
    tail = sparge.KeyBlocks.build(k[:, :, 512:], mean=whole.mean)
    assert torch.equal(tail.pooled, whole.pooled[..., 8:])
    assert torch.equal(tail.sim, whole.sim[..., 8:])
    assert torch.equal(tail.mean, whole.mean)
    assert not torch.equal(sparge.KeyBlocks.build(k[:, :, 512:]).pooled, tail.pooled)
    joined = sparge.KeyBlocks.from_tensors(torch.cat([head.pooled, tail.pooled], dim=3),
                                           torch.cat([head.sim, tail.sim], dim=2), whole.mean,
                                           tokens=1000)
    assert torch.equal(joined.pooled, whole.pooled) and torch.equal(joined.sim, whole.sim)
    q = queries(37, 7)
    opts = dict(OPTIONS)
    opts.pop("pv_threshold")
    assert torch.equal(sparge.predict_block_mask(q, None, key_blocks=joined, **opts).to_dense(),
                       sparge.predict_block_mask(q, k, **opts).to_dense())
    with pytest.raises(ValueError, match="mean must be a tensor of shape"):
        sparge.KeyBlocks.build(k, mean=whole.mean[:, :1])
    with pytest.raises(ValueError, match="tokens must be an int in"):
        sparge.KeyBlocks.from_tensors(whole.pooled, whole.sim, whole.mean, tokens=5000)
    with pytest.raises(ValueError, match="sim .* and mean .* must be"):
        sparge.KeyBlocks.from_tensors(whole.pooled, whole.sim[..., 1:], whole.mean, tokens=10)
    with pytest.raises(ValueError, match="float64"):
        sparge.KeyBlocks.from_tensors(whole.pooled.float(), whole.sim, whole.mean, tokens=10)


def test_errors_name_the_argument():
    k, v = cache(400)
    q = queries(3, 1)
    blocks = sparge.KeyBlocks.build(k[:, :, :300], max_tokens=400)
    with pytest.raises(ValueError, match="append_key_blocks after the cache grows"):
        sparge.attention(q, k, v, key_blocks=blocks, **OPTIONS)
    blocks.append(k)
    with pytest.raises(ValueError, match=r"key_blocks.block_k \(64\) must equal"):
        sparge.attention(q, k, v, key_blocks=blocks, block_k=32, **OPTIONS)
    with pytest.raises(NotImplementedError, match="pooled estimate only"):
        sparge.attention(q, k, v, key_blocks=blocks, **dict(OPTIONS, estimate="sampled_rows"))
    with pytest.raises(ValueError, match="token_grid"):
        sparge.attention(q, k, v, key_blocks=blocks, token_grid=(1, 20, 20),
                         **dict(OPTIONS, is_causal=False))
    with pytest.raises(TypeError, match="key_blocks must be a sparge.KeyBlocks"):
        sparge.attention(q, k, v, key_blocks=blocks.pooled, **OPTIONS)
    with pytest.raises(ValueError, match="up to 7 blocks of block_k 64 keys, k has 500"):
        blocks.append(torch.cat([k, k[:, :, :100]], dim=2))
    with pytest.raises(ValueError, match="build_key_blocks first"):
        sparge.KeyBlocks(2, 2, 32, 400).append(k)
    with pytest.raises(ValueError, match=r"must match k \(batch 2, heads 2, head_dim 32\)"):
        sparge.KeyBlocks(2, 1, 32, 400).rebuild(k)
    with pytest.raises(ValueError, match="max_tokens must be an int >= 1"):
        sparge.KeyBlocks(2, 2, 32, 0)
    blocks.mean = blocks.mean.float()
    with pytest.raises(TypeError, match="key_blocks.mean must be float64"):
        sparge.attention(q, k, v, key_blocks=blocks, **OPTIONS)


@requires_cuda
@pytest.mark.parametrize("head_dim", [32, 128])  # 32: q and k travel padded to a compiled 64
def test_cuda_key_blocks_equal_the_plain_call(head_dim):
    k, v = cache()
    k, v = (t.repeat(1, 1, 1, head_dim // 32).cuda() for t in (k, v))
    blocks = sparge.KeyBlocks.build(k)
    assert blocks.pooled.is_cuda and blocks.tokens == 1000
    opts = dict(OPTIONS)
    opts.pop("pv_threshold")
    for n in (1, 37):
        q = queries(n, 20 + n).repeat(1, 1, 1, head_dim // 32).cuda()
        want = sparge.attention(q, k, v, **OPTIONS)
        assert torch.equal(sparge.attention(q, k, v, key_blocks=blocks, **OPTIONS), want)
        mask = sparge.predict_block_mask(q, k, **opts)
        alone = sparge.predict_block_mask(q, None, key_blocks=blocks, **opts)
        assert torch.equal(alone.to_dense(), mask.to_dense())
