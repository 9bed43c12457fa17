"""torch.library integration: opcheck of the ops (schema, fake kernels), torch.compile with
fullgraph=True (no graph breaks) giving the eager result, and a patched model compiled."""
import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

import sparge
from conftest import dense_options, make_qkv

# Named keyword arguments of the ops (one per option of include/sparge/option_list.h).
OPTIONS = dict(scale=0.25, sim_threshold=0.5, select_value=0.9, pv_threshold=50.0,
               backend="cpu")


@pytest.mark.parametrize("layout", ["HND", "NHD"])
def test_opcheck_attention(layout):
    q, k, v = make_qkv(seq_q=150, head_dim=16, seed=1)
    if layout == "NHD":  # HND views of token-major storage: the fake must keep the strides
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    torch.library.opcheck(torch.ops.sparge.attention.default, (q, k, v),
                          dict(OPTIONS, select_value_per_head=torch.full((2,), 0.8),
                               with_extras=True),
                          test_utils=("test_schema", "test_faketensor"))


def test_opcheck_stage_ops():
    q, k, v = make_qkv(seq_q=150, head_dim=16, seed=2)
    counts, indices = torch.ops.sparge.predict_block_mask(q, k, **OPTIONS)
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.sparge.predict_block_mask.default, (q, k), OPTIONS,
                          test_utils=checks)
    torch.library.opcheck(torch.ops.sparge.block_sparse_attention.default,
                          (q, k, v, counts, indices), dict(OPTIONS, with_extras=True),
                          test_utils=checks)
    torch.library.opcheck(torch.ops.sparge.check_options.default, (4,), OPTIONS,
                          test_utils=("test_schema",))
    torch.library.opcheck(torch.ops.sparge.hilbert_order.default,
                          (2, 3, 4, torch.device("cpu")), test_utils=checks)


def _explain(fn, *args):
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args)


def test_compile_fullgraph_attention():
    q, k, v = make_qkv(heads_q=4, heads_kv=2, seq_q=260, head_dim=16, seed=3)

    def f(q, k, v):
        out = sparge.attention(q, k, v, is_causal=True, cdf_threshold=0.9,
                               sim_threshold=torch.tensor([0.1, 0.3, 0.5, 0.7]))
        return torch.relu(out) * 2.0

    assert _explain(f, q, k, v).graph_break_count == 0
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(q, k, v), f(q, k, v))


def test_compile_fullgraph_stages_and_token_grid():
    q, k, v = make_qkv(seq_q=4 * 6 * 6, head_dim=16, seed=4)

    def f(q, k, v):
        mask = sparge.predict_block_mask(q, k, sim_threshold=0.2, topk=0.5)
        staged = sparge.block_sparse_attention(q, k, v, mask)
        grid = sparge.attention(q, k, v, token_grid=(4, 6, 6), **dense_options())
        return staged, grid, mask.counts

    assert _explain(f, q, k, v).graph_break_count == 0
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for got, expected in zip(compiled(q, k, v), f(q, k, v)):
        assert torch.equal(got, expected)


class TinyAttention(torch.nn.Module):
    """An attention block that calls F.scaled_dot_product_attention at run time, as models do."""

    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


def test_compile_patched_model_fullgraph():
    torch.manual_seed(0)
    model = TinyAttention().eval()
    x = torch.randn(2, 300, 64)
    with torch.no_grad():
        expected = model(x)
        graphs = []

        def recording_backend(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        with sparge.patch_sdpa(min_seq_len=0, **dense_options()) as patch:
            torch._dynamo.reset()
            got = torch.compile(model, fullgraph=True, backend=recording_backend)(x)
            assert not patch.fallbacks
    targets = [str(node.target) for gm in graphs for node in gm.graph.nodes]
    assert len(graphs) == 1 and "sparge.attention" in targets
    assert not any("scaled_dot_product" in t for t in targets)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
