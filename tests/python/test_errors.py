"""Every error the Python API raises: the type (ValueError / TypeError / NotImplementedError /
RuntimeError) and a message naming the argument."""
import math

import pytest
import torch

import sparge
from conftest import make_qkv


@pytest.fixture
def qkv():
    return make_qkv(seq_q=100, head_dim=16)


@pytest.mark.parametrize("kwargs,error,fragment", [
    (dict(cdf_threshold=1.5), ValueError, "select_value (cdf_threshold) must be in (0, 1], got 1.5"),
    (dict(cdf_threshold=0.0), ValueError, "select_value (cdf_threshold) must be in (0, 1]"),
    (dict(topk=0.0), ValueError, "select_value (topk) must be in (0, 1]"),
    (dict(sim_threshold=1.5), ValueError, "sim_threshold must be in [-1, 1]"),
    (dict(sim_threshold=math.nan), ValueError, "sim_threshold must be in [-1, 1], got nan"),
    (dict(pv_threshold=-1.0), ValueError, "pv_threshold must be in [0, inf]"),
    (dict(sim_threshold=torch.tensor([0.5, 2.0])), ValueError, "sim_threshold[1]"),
    (dict(pv_threshold=torch.tensor([1.0, 2.0, 3.0])), ValueError,
     "pv_threshold must be a float or a 1-D tensor of length 2"),
    (dict(topk=torch.tensor([1, 1])), TypeError, "topk tensor must have a floating dtype"),
    (dict(sim_threshold="high"), TypeError, "sim_threshold must be a float"),
    (dict(sim_threshold=True), TypeError, "sim_threshold must be a float"),
    (dict(cdf_threshold=0.9, topk=0.5), ValueError, "cdf_threshold or topk, not both"),
    (dict(block_q=100), ValueError, "block_q must be one of 16, 32, 64, 128, 256, got 100"),
    (dict(block_k=512), ValueError, "block_k must be one of"),
    (dict(block_q=0), ValueError, "block_q must be one of 16, 32, 64, 128, 256, got 0"),
    (dict(block_k=0), ValueError, "block_k must be one of 16, 32, 64, 128, 256, got 0"),
    (dict(block_q=2 ** 40), ValueError, "block_q must fit in a 32-bit int, got 1099511627776"),
    (dict(quantized=1), TypeError, "quantized must be a bool"),
    (dict(quantized="fp8"), ValueError, "quantized must be one of 'none', 'int8_fp8', 'int8'"),
    (dict(block_k=64.0), TypeError, "block_k must be an int"),
    (dict(scale=0.0), ValueError, "scale must be finite and > 0"),
    (dict(scale=math.inf), ValueError, "scale must be finite and > 0"),
    (dict(scale="1"), TypeError, "scale must be a float"),
    (dict(layout="BNHD"), ValueError, "layout must be one of 'HND', 'NHD'"),
    (dict(causal_align="center"), ValueError, "causal_align must be one of"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
    (dict(backend="cuda"), ValueError, "backend kCuda needs cuda tensors"),
    (dict(is_causal=1), TypeError, "is_causal must be a bool"),
    (dict(token_grid=(2, 5)), TypeError, "token_grid must be a tuple of 3 ints"),
    (dict(token_grid=(2, 8, 8)), ValueError, "needs 128 tokens, but the sequence has 100"),
    (dict(token_grid=(1, 10, 10), is_causal=True), ValueError, "token_grid reorders tokens"),
    (dict(dropout_p=0.1), ValueError, "dropout_p must be 0 (Sparge has no attention dropout"),
    (dict(dropout_p=math.nan), ValueError, "dropout_p must be 0"),
    (dict(dropout_p="0"), TypeError, "dropout_p must be a float, got str"),
    (dict(enable_gqa=1), TypeError, "enable_gqa must be a bool, got int"),
])
def test_option_errors(qkv, kwargs, error, fragment):
    with pytest.raises(error) as info:
        sparge.attention(*qkv, **kwargs)
    assert fragment in str(info.value)


def test_tensor_errors(qkv):
    q, k, v = qkv
    cases = [
        ((q.double(), k.double(), v.double()), TypeError, "q.dtype must be float32, float16 or "
                                                          "bfloat16, got Double"),
        ((q, k.half(), v), TypeError, "k.dtype and v.dtype must equal q.dtype (float32)"),
        ((q[0], k, v), ValueError, "q must be 4-D"),
        ((q.tolist(), k, v), TypeError, "q must be a torch.Tensor"),
        ((q, k[:, :, :50], v), ValueError, "v shape must equal k shape"),
        ((q, k[:, :1, :, :8], v[:, :1]), ValueError, "k.head_dim must equal q.head_dim (16)"),
        ((torch.randn(1, 3, 100, 16), k, v), ValueError,
         "q.heads (3) must be a multiple of k.heads (2)"),
        ((torch.randn(2, 2, 100, 16), k, v), ValueError, "k.batch must equal q.batch (2)"),
        ((torch.randn(1, 2, 10, 512), torch.randn(1, 2, 10, 512), torch.randn(1, 2, 10, 512)),
         NotImplementedError, "head_dim must be <= 256, got 512"),
    ]
    for args, error, fragment in cases:
        with pytest.raises(error) as info:
            sparge.attention(*args)
        assert fragment in str(info.value), (fragment, str(info.value))


def test_gradients_are_refused(qkv):
    q, k, v = (t.clone().requires_grad_() for t in qkv)
    with pytest.raises(RuntimeError, match="inference-only"):
        sparge.attention(q, k, v)
    with torch.no_grad():
        assert sparge.attention(q, k, v).requires_grad is False


def test_block_mask_errors(qkv):
    q, k, v = qkv
    mask = sparge.predict_block_mask(q, k)
    with pytest.raises(TypeError, match="block_mask must be a sparge.BlockMask"):
        sparge.block_sparse_attention(q, k, v, mask.to_dense())
    short = make_qkv(seq_q=300, head_dim=16)
    with pytest.raises(ValueError, match="block_mask must hold"):
        sparge.block_sparse_attention(*short, mask)
    bad = sparge.BlockMask(mask.counts.clone(), mask.indices.flip(-1).contiguous(),
                           seq_q=100, seq_k=100)
    bad.counts.fill_(2)
    with pytest.raises(ValueError, match="strictly ascending"):
        sparge.block_sparse_attention(q, k, v, bad)
    with pytest.raises(TypeError, match="block_mask.counts must be int32"):
        sparge.block_sparse_attention(q, k, v, sparge.BlockMask(
            mask.counts.long(), mask.indices, seq_q=100, seq_k=100))
    with pytest.raises(ValueError, match=r"counts must be \[batch, heads, 3\]"):
        sparge.BlockMask(mask.counts, mask.indices, seq_q=300, seq_k=100)
    with pytest.raises(ValueError, match="dense must be 4-D"):
        sparge.BlockMask.from_dense(torch.ones(3, 3), seq_q=100, seq_k=100)


def test_op_level_errors(qkv):
    q, k, v = qkv
    # The ops' arguments have names, so errors and traces name them.
    with pytest.raises(ValueError, match="sim_threshold per-head tensor must be a contiguous cpu"):
        torch.ops.sparge.attention(q, k, v, sim_threshold_per_head=torch.ones(5))
    with pytest.raises(ValueError, match="block_q must be one of 16, 32, 64, 128, 256, got 0"):
        torch.ops.sparge.attention(q, k, v, block_q=0)  # was a SIGFPE (division by block_q)
    with pytest.raises(ValueError, match="block_k must be one of 16, 32, 64, 128, 256, got 0"):
        torch.ops.sparge.predict_block_mask(q, k, block_k=0)
    with pytest.raises(ValueError, match="select must be one of 'topcdf', 'topk', got 'top'"):
        torch.ops.sparge.attention(q, k, v, select="top")
    with pytest.raises(RuntimeError, match="block_q"):  # the schema names the argument
        torch.ops.sparge.attention(q, k, v, block_q=1.5)
    with pytest.raises(ValueError, match="token_grid sizes must be >= 1"):
        torch.ops.sparge.hilbert_order(0, 2, 2, torch.device("cpu"))
