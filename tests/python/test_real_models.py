"""The real-model inputs of the evaluation (bench/eval/real_models.py): captures have the
documented shapes and flags, recomputing SDPA from a capture gives the model's own attention
output, the committed capture files are what the installed models produce, and the end-to-end
metric of the unpatched model against itself is exact. Model tests skip where a wheel is missing."""
import math
import pathlib
import sys

import pytest
import torch
import torch.nn.functional as F

from sparge import measure

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench" / "eval"))
import real_models as rm  # noqa: E402

NAMES = sorted(rm.SOURCES)
DENSE = dict(sim_threshold=1.0, cdf_threshold=1.0, pv_threshold=math.inf)  # skips nothing
QUICK = dict(inputs_limit=2, max_tokens=1024)  # keeps the cpu run short


def need_model(name):
    if not rm.model_available(name):
        pytest.skip(rm.why_unavailable(name))


@pytest.fixture(scope="module")
def model_captures():
    cache = {}

    def get(name):
        need_model(name)
        if name not in cache:
            cache[name] = rm.capture(name, "cpu", torch.float32, from_file=False)
        return cache[name]
    return get


def check_shapes(src, captures, layers, heads, tokens):
    assert [c.layer for c in captures] == list(layers)
    for c in captures:
        assert c.name == src.name and c.token_grid is None
        assert c.causal is src.causal
        assert c.scale == pytest.approx(1.0 / math.sqrt(src.head_dim))
        assert c.heads == tuple(heads)
        for t in (c.q, c.k, c.v):
            assert t.shape == (1, len(heads), tokens, src.head_dim)
            assert torch.isfinite(t).all()
        group = src.heads // src.kv_heads
        assert c.kv_heads == len(heads) // group
        # the repeated K/V heads of one GQA group are copies of one head
        assert torch.equal(c.k, c.k[:, ::group].repeat_interleave(group, dim=1))
        assert torch.equal(c.v, c.v[:, ::group].repeat_interleave(group, dim=1))


@pytest.mark.parametrize("name", NAMES)
def test_committed_file_has_documented_shapes(name):
    src = rm.SOURCES[name]
    assert rm.capture_file(name).is_file() and rm.available(name)
    captures = rm.capture(name, "cpu", torch.float32, from_file=True)
    assert all(c.origin == "file" and c.out is None for c in captures)
    check_shapes(src, captures, src.file_layers, src.file_heads, src.tokens)


def test_committed_files_fit_the_device_carry():
    total = sum(rm.capture_file(n).stat().st_size for n in NAMES)
    assert total < 16 * 2**20, f"captures take {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("name", NAMES)
def test_model_captures_every_layer_and_head(name, model_captures):
    src = rm.SOURCES[name]
    captures = model_captures(name)
    assert all(c.origin == "model" for c in captures)
    check_shapes(src, captures, range(src.layers), range(src.heads), src.tokens)
    _, ids = rm.inputs(name)[0]
    assert ids.shape == (1, src.tokens)


def test_inputs_are_the_documented_windows():
    need_model("minilm")
    need_model("smollm2")
    windows = rm.inputs("minilm")
    assert len(windows) == 12 and all(ids.shape == (1, 512) for _, ids in windows)
    assert windows[0][0] == "GPL-3 tokens 0-510"
    prefixes = rm.inputs("smollm2")
    assert [ids.shape[1] for _, ids in prefixes] == [4096, 3712, 2224]
    assert [label.split()[0] for label, _ in prefixes] == list(rm.TEXTS)


@pytest.mark.parametrize("name", NAMES)
def test_sdpa_from_capture_reproduces_the_model(name, model_captures):
    for c in model_captures(name):
        out = F.scaled_dot_product_attention(c.q, c.k, c.v, is_causal=c.causal, scale=c.scale)
        torch.testing.assert_close(out, c.out, atol=1e-5, rtol=1e-5)
        group = c.q.shape[1] // c.kv_heads
        if group > 1:  # the model's own GQA form gives the same
            out = F.scaled_dot_product_attention(c.q, c.k[:, ::group], c.v[:, ::group],
                                                 is_causal=c.causal, scale=c.scale,
                                                 enable_gqa=True)
            torch.testing.assert_close(out, c.out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_committed_file_is_what_the_model_gives(name, model_captures):
    src = rm.SOURCES[name]
    by_layer = {c.layer: c for c in model_captures(name)}
    heads = list(src.file_heads)
    for c in rm.capture(name, "cpu", torch.float32, from_file=True):
        full = by_layer[c.layer]
        for got, want in ((c.q, full.q), (c.k, full.k), (c.v, full.v)):
            want = want[:, heads].half().float()
            # Not element-wise: a model loaded from a float16 copy of the weights (the GPU
            # machine's) flips the last float16 bit of a few elements.
            rel_l1 = measure.rel_l1(got, want)
            assert rel_l1 < 1e-3, f"{name} layer {c.layer}: rel L1 {rel_l1:.2e}"
            assert (got - want).abs().max().item() < 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_unpatched_end_to_end_is_exact(name):
    need_model(name)
    result = rm.end_to_end(name, "cpu", torch.float32, None, **QUICK)
    assert result["metric"] == rm.SOURCES[name].metric and result["sparsity"] == 0.0
    assert len(result["per_input"]) == 2
    if result["metric"] == "embedding_cos":
        assert result["value"] > 1 - 1e-6
    else:
        assert result["value"] == 0.0  # the same cpu computation twice


@pytest.mark.parametrize("name", NAMES)
def test_dense_sparge_matches_and_sparse_settings_skip(name):
    need_model(name)
    src = rm.SOURCES[name]
    dense = rm.end_to_end(name, "cpu", torch.float32, DENSE, **QUICK)
    assert dense["sparsity"] == 0.0
    for entry in dense["per_input"]:
        assert entry["sparge_calls"] == src.layers and not entry["fallbacks"]
    if src.metric == "embedding_cos":
        assert dense["value"] > 1 - 1e-5
    else:
        assert abs(dense["value"]) < 1e-5
    sparse = rm.end_to_end(name, "cpu", torch.float32,
                           dict(sim_threshold=0.3, cdf_threshold=0.9, pv_threshold=10.0), **QUICK)
    assert sparse["sparsity"] > 0.05
    if src.metric == "embedding_cos":
        assert 0.9 < sparse["value"] < 1.0
    else:
        assert 0.0 < sparse["value"] < 10.0
