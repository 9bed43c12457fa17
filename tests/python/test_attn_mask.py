"""attn_mask and key_lengths (issue 12 item 2) on the CPU, against PyTorch's SDPA with the same
mask: bool and additive masks, broadcast shapes, fully masked rows, odd lengths, GQA, combined
with causality and windows; patch_sdpa serving masked calls on cpu, padding masks as key_lengths
on every device, and falling back on cuda for other masks; errors naming the argument."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import sparge
from conftest import CPU_BACKENDS, HAS_CUDA, dense_options, make_qkv


def torch_sdpa(q, k, v, mask, is_causal=False, scale=None):
    """PyTorch's own SDPA in float64 (GQA by repeating k, v), the oracle of these tests."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(group, dim=1) for t in (k, v))
    if mask is not None and mask.is_floating_point():
        mask = mask.double()
    return F.scaled_dot_product_attention(q.double(), k, v, attn_mask=mask, is_causal=is_causal,
                                          scale=scale)


def random_bool(shape, p_hidden, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen) >= p_hidden


def random_additive(shape, p_hidden, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    bias = torch.rand(shape, generator=gen) * 4 - 2
    hidden = torch.rand(shape, generator=gen) < p_hidden
    return bias.masked_fill(hidden, -math.inf).to(dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["bool", "float32", "bfloat16"])
@pytest.mark.parametrize("shape", ["full", "heads1", "batch1_2d", "key_padding", "key_axis1"])
def test_equals_sdpa_with_the_same_mask_when_nothing_is_skipped(backend, kind, shape):
    batch, hq, hkv, nq, nk = 2, 4, 2, 77, 150  # GQA, odd lengths (tail blocks)
    q, k, v = make_qkv(batch=batch, heads_q=hq, heads_kv=hkv, seq_q=nq, seq_k=nk, seed=3)
    mask_shape = {"full": (batch, hq, nq, nk), "heads1": (batch, 1, nq, nk),
                  "batch1_2d": (nq, nk), "key_padding": (batch, 1, 1, nk),
                  "key_axis1": (batch, hq, nq, 1)}[shape]
    seed = hash((kind, shape)) % 1000
    if kind == "bool":
        mask = random_bool(mask_shape, 0.4, seed)
    else:
        mask = random_additive(mask_shape, 0.3, seed, getattr(torch, kind))
    if shape in ("full", "heads1", "batch1_2d"):  # a fully masked row in each
        mask[..., 5, :] = False if kind == "bool" else -math.inf
    out, stats = sparge.attention(q, k, v, attn_mask=mask, backend=backend, block_q=32,
                                  block_k=16, return_stats=True, **dense_options())
    want = torch_sdpa(q, k, v, mask)
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=0)
    if shape in ("full", "heads1", "batch1_2d"):
        assert torch.all(out[..., 5, :] == 0)  # SDPA's (torch >= 2.5) rule: zeros
        assert torch.all(stats.lse[..., 5] == -math.inf)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_key_lengths_equal_a_padding_mask_and_combine_with_causal_and_window(backend):
    q, k, v = make_qkv(batch=3, heads_q=2, seq_q=140, seed=4)
    lengths = [140, 61, 0]
    pad = torch.arange(140)[None, :] < torch.tensor(lengths)[:, None]  # [B, Nk]
    mask = pad[:, None, None, :]
    for extra in (dict(), dict(is_causal=True), dict(is_causal=True, window_left=20)):
        got = sparge.attention(q, k, v, key_lengths=lengths, backend=backend, **extra,
                               **dense_options())
        via_mask = sparge.attention(q, k, v, attn_mask=mask, backend=backend, **extra,
                                    **dense_options())
        rows = torch.arange(140)[:, None]
        band = torch.ones(140, 140, dtype=torch.bool)
        if extra.get("is_causal"):
            band &= torch.arange(140)[None, :] <= rows
        if "window_left" in extra:
            band &= torch.arange(140)[None, :] >= rows - extra["window_left"]
        want = torch_sdpa(q, k, v, mask & band)
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)
        torch.testing.assert_close(via_mask, got, atol=1e-6, rtol=0)
    assert torch.all(got[2] == 0)  # a batch entry with no keys


def test_with_thresholds_runs_and_hidden_tiles_are_never_kept():
    q, k, v = make_qkv(batch=2, heads_q=2, seq_q=512, head_dim=32, seed=5)
    # Packed sequences: block-diagonal, segments of 200 and 312 tokens.
    seg = (torch.arange(512) >= 200)
    mask = (seg[:, None] == seg[None, :])[None, None]
    out, stats = sparge.attention(q, k, v, attn_mask=mask, cdf_threshold=0.5, sim_threshold=0.0,
                                  pv_threshold=10.0, return_stats=True)
    dense = stats.block_mask.to_dense()  # [B, H, nq, nk]
    bq, bk = stats.block_mask.block_q, stats.block_mask.block_k
    for i in range(dense.shape[2]):
        for j in range(dense.shape[3]):
            tile = mask[0, 0, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
            if not tile.any():
                assert not dense[..., i, j].any(), (i, j)
    assert 0.0 < stats.sparsity < 1.0
    print(f"packed 200+312 tokens, cdf 0.5: sparsity {stats.sparsity:.3f}")
    assert not torch.isnan(out).any()
    # Stage 2 over the same tiles with the same mask gives the same output.
    again = sparge.block_sparse_attention(q, k, v, stats.block_mask, attn_mask=mask,
                                          pv_threshold=10.0)
    torch.testing.assert_close(again, out, atol=0, rtol=0)


def test_block_sparse_attention_and_predict_take_the_mask():
    q, k, v = make_qkv(heads_q=2, seq_q=200, seed=6)
    mask = random_bool((1, 2, 200, 200), 0.5, 7)
    mask[..., :64, 128:] = False  # tiles (0, 2) and (0, 3) hidden whole
    bm = sparge.predict_block_mask(q, k, attn_mask=mask, sim_threshold=1.0, block_q=64,
                                   block_k=64)
    dense = bm.to_dense()
    assert not dense[0, :, 0, 2:].any() and dense[0, :, 0, :2].all()
    assert dense[0, :, 1:].all()  # nothing else is hidden, and sim 1 keeps every other tile
    out = sparge.block_sparse_attention(q, k, v, bm, attn_mask=mask, pv_threshold=math.inf)
    torch.testing.assert_close(out.double(), torch_sdpa(q, k, v, mask), atol=2e-5, rtol=0)


def test_nhd_layout_and_token_grid_permute_the_mask_with_the_tokens():
    q, k, v = make_qkv(heads_q=2, seq_q=6 * 6 * 4 + 10, seed=8)
    n = q.shape[2]
    mask = random_bool((1, 1, n, n), 0.3, 9)
    want = torch_sdpa(q, k, v, mask)
    got = sparge.attention(q, k, v, attn_mask=mask, token_grid=(4, 6, 6), grid_offset=10,
                           **dense_options())
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)
    nhd = [t.transpose(1, 2) for t in (q, k, v)]
    got = sparge.attention(*nhd, attn_mask=mask, layout="NHD", **dense_options())
    torch.testing.assert_close(got.transpose(1, 2).double(), want, atol=2e-5, rtol=0)


def test_errors_name_the_argument():
    q, k, v = make_qkv(batch=2, heads_q=2, seq_q=130, seed=10)
    with pytest.raises(ValueError, match=r"attn_mask of shape \[2, 3, 130, 130\] does not "
                                         r"broadcast to \[B, Hq, Nq, Nk\]"):
        sparge.attention(q, k, v, attn_mask=torch.ones(2, 3, 130, 130, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask.dtype must be bool"):
        sparge.attention(q, k, v, attn_mask=torch.ones(130, 130, dtype=torch.int64))
    with pytest.raises(TypeError, match="attn_mask must be a torch.Tensor"):
        sparge.attention(q, k, v, attn_mask=[[True]])
    with pytest.raises(ValueError, match="key_lengths must be 2 integers"):
        sparge.attention(q, k, v, key_lengths=[3])
    with pytest.raises(ValueError, match=r"attn_mask.key_lengths\[1\] must be in \[0, k.tokens = "
                                         r"130\], got 131"):
        sparge.attention(q, k, v, key_lengths=[3, 131])
    # The op itself checks what ops.py normalizes (a 4-D mask), naming the argument.
    with pytest.raises(ValueError, match="attn_mask.seq_k must equal k.tokens"):
        torch.ops.sparge.attention(q, k, v, torch.ones(1, 1, 1, 7, dtype=torch.bool))


def test_patch_sdpa_serves_masks_on_cpu():
    q, k, v = make_qkv(batch=2, heads_q=2, seq_q=200, seed=11)
    pad = torch.arange(200)[None, :] < torch.tensor([200, 130])[:, None]
    cases = [pad[:, None, None, :],                               # key padding
             random_additive((200, 200), 0.2, 12),               # a bias with holes
             torch.ones(200, 200, dtype=torch.bool).tril(diagonal=-1)]  # row 0 sees nothing
    for mask in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("error", sparge.SpargeFallbackWarning)
            with sparge.patch_sdpa(**dense_options()) as patch:
                got = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert patch.sparge_calls == 1 and not patch.fallbacks
        torch.testing.assert_close(got.double(), torch_sdpa(q, k, v, mask), atol=2e-5, rtol=0)
    # 3-D inputs [B, N, D] with a 3-D mask [B, Nq, Nk]: one head.
    q3, k3, v3 = (t[:, 0] for t in (q, k, v))
    mask3 = random_bool((2, 200, 200), 0.3, 13)
    with sparge.patch_sdpa(**dense_options()) as patch:
        got = F.scaled_dot_product_attention(q3, k3, v3, attn_mask=mask3)
    assert patch.sparge_calls == 1
    want = torch_sdpa(q3[:, None], k3[:, None], v3[:, None], mask3[:, None])[:, 0]
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)


def test_patch_sdpa_falls_back_on_masks_it_cannot_read():
    q, k, v = make_qkv(seq_q=200, seed=14)
    with sparge.patch_sdpa() as patch:  # an integer mask: PyTorch raises its own error
        with pytest.raises(RuntimeError):
            F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(200, 200,
                                                                         dtype=torch.int32))
    assert patch.sparge_calls == 0


def padding_mask(lengths, seq_q, seq_k, causal=False, rows=True):
    """A right-padded batch's bool mask: [B, 1, seq_q, seq_k] (rows=True, causal if asked) or
    [B, 1, 1, seq_k] (rows=False, the key-padding form)."""
    keys = torch.arange(seq_k)[None, :] < torch.tensor(lengths)[:, None]  # [B, Nk]
    if not rows:
        return keys[:, None, None, :]
    mask = keys[:, None, None, :].expand(len(lengths), 1, seq_q, seq_k)
    if causal:
        mask = mask & (torch.arange(seq_k)[None, :] <= torch.arange(seq_q)[:, None])
    return mask


def test_padding_masks_become_key_lengths():
    from sparge import _dense_mask
    n = 150
    scores = (3, 2, n, n)
    for mask, flags in ((padding_mask([n, 70, 1], n, n, rows=False), {}),
                        (padding_mask([n, 70, 1], n, n), {}),
                        (padding_mask([n, 70, 1], n, n, causal=True), dict(is_causal=True)),
                        (torch.zeros(3, 1, n, n).masked_fill(
                            ~padding_mask([n, 70, 1], n, n, causal=True),
                            torch.finfo(torch.float32).min), dict(is_causal=True))):
        options, why = _dense_mask.options_for_mask(mask, n, n, scores)
        assert options is not None, why
        assert options.pop("key_lengths").tolist() == [n, 70, 1]
        assert {name: options[name] for name in flags} == flags
    # One length for every entry (a [1, 1, 1, Nk] mask) is repeated per entry.
    options, _ = _dense_mask.options_for_mask(padding_mask([90], n, n, rows=False), n, n, scores)
    assert options["key_lengths"].tolist() == [90, 90, 90]
    # Left padding, a hole, heads that differ, an entry whose rows see no key: not reducible.
    left = padding_mask([n, 70, 1], n, n).flip(-1)
    hole = padding_mask([n, 70, 1], n, n).clone()
    hole[0, 0, :, 10] = False
    heads = torch.cat([padding_mask([n, 70, 1], n, n), padding_mask([n, 71, 1], n, n)], dim=1)
    empty = padding_mask([n, 70, 0], n, n)
    for mask in (left, hole, heads, empty):
        options, why = _dense_mask.options_for_mask(mask, n, n, scores)
        assert options is None and why, why


@pytest.mark.parametrize("causal", [False, True])
def test_patch_sdpa_serves_padding_masks_as_key_lengths(causal):
    q, k, v = make_qkv(batch=3, heads_q=4, heads_kv=2, seq_q=170, seq_k=170, head_dim=32,
                       seed=21)
    mask = padding_mask([170, 99, 5], 170, 170, causal=causal)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        with sparge.patch_sdpa(min_seq_len=0, **dense_options()) as patch:
            got = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert patch.sparge_calls == 1 and patch.fallbacks == {}
    torch.testing.assert_close(got.double(), torch_sdpa(q, k, v, mask), atol=2e-5, rtol=0)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build")
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_serves_key_lengths_and_padding_masks(causal):
    q, k, v = make_qkv(batch=3, heads_q=4, heads_kv=2, seq_q=700, seq_k=700, head_dim=64,
                       dtype=torch.bfloat16, seed=22)
    lengths = [700, 333, 64]
    want = sparge.attention(q, k, v, key_lengths=lengths, is_causal=causal, **dense_options())
    got = sparge.attention(q.cuda(), k.cuda(), v.cuda(), key_lengths=lengths, is_causal=causal,
                           **dense_options())
    assert not got.isnan().any()
    torch.testing.assert_close(got.cpu().float(), want.float(), atol=2e-2, rtol=0)
    mask = padding_mask(lengths, 700, 700, causal=causal).cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # served, not a fallback
        with sparge.patch_sdpa(**dense_options()) as patch:
            via_patch = F.scaled_dot_product_attention(q.cuda(), k.cuda(), v.cuda(),
                                                       attn_mask=mask, enable_gqa=True)
    assert patch.sparge_calls == 1 and patch.fallbacks == {}
    torch.testing.assert_close(via_patch, got, atol=0, rtol=0)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build")
def test_cuda_refuses_masks_with_options_its_path_does_not_take_and_patch_falls_back():
    q, k, v = make_qkv(seq_q=256, dtype=torch.bfloat16, device="cuda", seed=15)
    mask = random_bool((256, 256), 0.3, 16).cuda()
    with pytest.raises(NotImplementedError, match="target_error"):
        sparge.attention(q, k, v, attn_mask=mask, target_error=0.05)
    with pytest.warns(sparge.SpargeFallbackWarning, match="target_error"):
        with sparge.patch_sdpa(target_error=0.05) as patch:
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert patch.sparge_calls == 0 and patch.fallbacks


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build")
@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_cuda_serves_dense_masks(dtype):
    # The CUDA path of dense masks: sparge.attention and patch_sdpa on cuda equal the CPU
    # backends on the same mask (Stage 1 in double on both: the same tiles but for ties), rows
    # that see no key give zeros.
    q, k, v = make_qkv(batch=2, heads_q=4, heads_kv=2, seq_q=700, seq_k=900, head_dim=64,
                       dtype=torch.bfloat16, seed=17)
    mask = random_bool((2, 1, 700, 900), 0.4, 18)
    mask[:, :, :5] = False  # rows that see no key
    if dtype != torch.bool:
        mask = torch.where(mask, torch.randn(mask.shape, generator=torch.Generator().manual_seed(19)),
                           torch.tensor(-math.inf))
    kw = dict(sim_threshold=-0.5, topk=0.5, pv_threshold=math.inf)
    cpu = sparge.attention(q, k, v, attn_mask=mask, backend="cpu", **kw)
    gpu = sparge.attention(q.cuda(), k.cuda(), v.cuda(), attn_mask=mask.cuda(), **kw)
    assert not gpu.isnan().any()
    rel = ((gpu.cpu().float() - cpu.float()).abs().sum() / cpu.float().abs().sum()).item()
    assert rel <= 1e-2, rel
    assert (gpu[:, :, :5] == 0).all()
    with sparge.patch_sdpa(**kw) as patch:
        patched = F.scaled_dot_product_attention(q.cuda(), k.cuda(), v.cuda(),
                                                 attn_mask=mask.cuda(), enable_gqa=True)
    assert patch.sparge_calls == 1 and patch.fallbacks == {}
    torch.testing.assert_close(patched, gpu, atol=0, rtol=0)
