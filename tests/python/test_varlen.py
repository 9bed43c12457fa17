"""sparge.attention_varlen (issue 14, item 4): a packed batch in flash-attn's varlen layout gives
exactly the outputs of separate sparge.attention calls per sequence (causality per sequence,
both alignments, GQA, odd lengths, a sequence without queries, cuda with a padded head dim when
a GPU is there), and bad cu_seqlens / max_seqlen / shapes get errors naming the argument."""
import pytest
import torch

import sparge

from conftest import CPU_BACKENDS, requires_cuda


def packed_case(lens_q, lens_k, heads_q, heads_kv, head_dim, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(total, heads):
        return torch.randn((total, heads, head_dim), generator=gen).to(device=device, dtype=dtype)

    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32)
    q, k, v = rand(int(cu_q[-1]), heads_q), rand(int(cu_k[-1]), heads_kv), rand(int(cu_k[-1]), heads_kv)
    return q, k, v, cu_q.to(device), cu_k.to(device)


def separate_calls(q, k, v, cu_q, cu_k, **options):
    """Each sequence through sparge.attention (layout NHD, batch 1); rows of empty sequences
    do not exist, so the result is [total_q, Hq, D] like the packed call's."""
    outs = []
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for i in range(len(cq) - 1):
        if cq[i + 1] == cq[i]:
            continue
        out = sparge.attention(q[cq[i]:cq[i + 1]][None], k[ck[i]:ck[i + 1]][None],
                               v[ck[i]:ck[i + 1]][None], layout="NHD", **options)
        outs.append(out[0])
    return torch.cat(outs)


CASES = [  # lengths of q, lengths of k, heads_q, heads_kv, head_dim, dtype, causal, align
    ([1, 7, 130, 300], [1, 19, 130, 200], 4, 2, 32, torch.float32, False, "top_left"),
    ([1, 7, 130, 300], [1, 19, 130, 200], 4, 2, 32, torch.bfloat16, True, "bottom_right"),
    ([100, 0, 133], [100, 57, 133], 2, 1, 16, torch.float16, True, "top_left"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("lens_q,lens_k,hq,hkv,d,dtype,causal,align", CASES)
def test_equals_separate_calls(backend, lens_q, lens_k, hq, hkv, d, dtype, causal, align):
    q, k, v, cu_q, cu_k = packed_case(lens_q, lens_k, hq, hkv, d, dtype, "cpu")
    # Every block similar, half the mass: Stage 1 decides, per sequence.
    options = dict(is_causal=causal, causal_align=align, sim_threshold=-1.0, cdf_threshold=0.5,
                   block_q=32, block_k=16, backend=backend)
    out = sparge.attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), **options)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert not out.isnan().any(), "every query row is written"
    assert torch.equal(out, separate_calls(q, k, v, cu_q, cu_k, **options))


def test_lists_for_cu_seqlens():
    q, k, v, cu_q, cu_k = packed_case([5, 9], [6, 4], 2, 2, 16, torch.float32, "cpu")
    out = sparge.attention_varlen(q, k, v, cu_q.tolist(), cu_k.tolist(), 9, 6)
    assert torch.equal(out, sparge.attention_varlen(q, k, v, cu_q, cu_k, 9, 6))


def test_value_head_dim_of_its_own():
    """v with its own head dim (MLA-style): [total_q, Hq, Ev] out, equal to separate calls."""
    q, k, v, cu_q, cu_k = packed_case([5, 130], [6, 140], 2, 2, 24, torch.float32, "cpu")
    v = torch.randn(v.shape[0], 2, 8, generator=torch.Generator().manual_seed(3))
    out = sparge.attention_varlen(q, k, v, cu_q, cu_k, 130, 140, is_causal=True)
    assert out.shape == (135, 2, 8)
    assert torch.equal(out, separate_calls(q, k, v, cu_q, cu_k, is_causal=True))


@requires_cuda
@pytest.mark.parametrize("head_dim", [128, 80])  # 80: padded to a compiled head dim and back
def test_cuda_equals_separate_calls(head_dim):
    q, k, v, cu_q, cu_k = packed_case([1, 300, 1000], [1, 700, 1000], 4, 2, head_dim, torch.bfloat16,
                                      "cuda")
    options = dict(is_causal=True, causal_align="bottom_right", topk=0.3, sim_threshold=-1.0)
    out = sparge.attention_varlen(q, k, v, cu_q, cu_k, 1000, 1000, **options)
    ref = separate_calls(q, k, v, cu_q, cu_k, **options)
    assert not out.isnan().any()
    assert torch.equal(out, ref)


def test_errors_name_the_argument():
    q, k, v, cu_q, cu_k = packed_case([10, 20], [15, 25], 2, 2, 16, torch.float32, "cpu")
    call = sparge.attention_varlen
    with pytest.raises(ValueError, match="q must be 3-D"):
        call(q[None], k, v, cu_q, cu_k, 20, 25)
    with pytest.raises(TypeError, match="cu_seqlens_q.dtype must be int32"):
        call(q, k, v, cu_q.long(), cu_k, 20, 25)
    with pytest.raises(ValueError, match="cu_seqlens_q must be nondecreasing"):
        call(q, k, v, torch.tensor([0, 20, 10, 30], dtype=torch.int32),
             torch.tensor([0, 15, 30, 40], dtype=torch.int32), 20, 25)
    with pytest.raises(ValueError, match=r"cu_seqlens_k\[2\] must equal the packed length 40"):
        call(q, k, v, cu_q, torch.tensor([0, 15, 39], dtype=torch.int32), 20, 25)
    with pytest.raises(ValueError, match="max_seqlen_q"):
        call(q, k, v, cu_q, cu_k, 19, 25)
    with pytest.raises(ValueError, match="same length"):
        call(q, k, v, cu_q, torch.tensor([0, 40], dtype=torch.int32), 20, 40)
    with pytest.raises(ValueError, match="no key"):
        call(q, k, v, cu_q, torch.tensor([0, 40, 40], dtype=torch.int32), 20, 40)
