"""The options written once in include/sparge/option_list.h, as every Python layer sees them:
the ops' schemas (one named, typed argument per option, with the C++ default), the keyword
defaults of the public functions, the selection keywords and the patch's pass-through set. The
C++ layers (C ABI, command line) are checked by tests/cpu/test_options.cc and test_c_api.cc."""
import inspect

import pytest
import torch

import sparge
from sparge import _C, _options

OPS = ["attention", "predict_block_mask", "block_sparse_attention", "check_options"]
# Python keywords that are the same option under another name, or sugar for it.
# `scale=None` is C++'s 0 (1/sqrt(head_dim)).
SUGAR = {"causal": "is_causal", "quant": "quantized", "select": "cdf_threshold/topk",
         "select_value": "cdf_threshold/topk", "pv_group_rows": None, "scale": "scale=None"}


def schema_defaults(op_name):
    schema = getattr(torch.ops.sparge, op_name).default._schema
    return {a.name: a.default_value for a in schema.arguments if a.kwarg_only}, schema


@pytest.mark.parametrize("op_name", OPS)
def test_op_schema_has_one_named_argument_per_option(op_name):
    defaults, schema = schema_defaults(op_name)
    names = [a.name for a in schema.arguments if a.kwarg_only]
    expected = []
    for option in _C.option_table():
        expected.append(option["name"])
        if option["kind"] == "head":
            expected.append(option["name"] + "_per_head")
    expected.append("backend")
    if op_name in ("attention", "block_sparse_attention"):
        expected.append("with_extras")
    assert names == expected, str(schema)
    for name, default in _options.DEFAULTS.items():
        if isinstance(default, float):
            assert defaults[name] == pytest.approx(default, rel=1e-7), name
        else:
            assert defaults[name] == default, name
        assert f"{name}=" in str(schema)


def test_python_defaults_are_the_cpp_defaults():
    table = {o["name"]: o for o in _C.option_table()}
    assert set(table) == set(_options.DEFAULTS)
    # Spot values, so a wrong table cannot agree with itself.
    assert _options.DEFAULTS["sim_threshold"] == 0.1 and _options.DEFAULTS["estimate"] == "auto"
    assert _options.DEFAULTS["select"] == "topcdf" and _options.DEFAULTS["select_value"] == 0.98
    assert _options.DEFAULTS["block_q"] == 128 and _options.DEFAULTS["block_k"] == 64
    assert _options.DEFAULTS["causal_align"] == "top_left" and _options.DEFAULTS["quant"] == "none"
    for name, option in table.items():
        assert option["doc"], name
        if option["kind"] == "enum":
            assert _options.DEFAULTS[name] in option["choices"]


@pytest.mark.parametrize("fn", [sparge.attention, sparge.predict_block_mask,
                                sparge.block_sparse_attention])
def test_public_keywords_default_to_the_cpp_defaults(fn):
    params = inspect.signature(fn).parameters
    assert params["scale"].default is None and _options.DEFAULTS["scale"] == 0.0
    for name, default in _options.DEFAULTS.items():
        if name in params and name not in SUGAR:
            assert params[name].default == default, (fn.__name__, name)
    if "cdf_threshold" in params:  # None = the default selection (TopCdf 0.98)
        assert params["cdf_threshold"].default is None and params["topk"].default is None


def test_every_option_is_reachable_from_sparge_attention():
    params = inspect.signature(sparge.attention).parameters
    for option in _C.option_table():
        keyword = SUGAR.get(option["name"], option["name"])
        if keyword is None:
            continue  # pv_group_rows: fixed by the CUDA kernels (one warp), C++/C ABI only
        assert all(k.split("=")[0] in params for k in keyword.split("/")), option["name"]


def test_every_selection_mode_has_a_keyword():
    assert set(_options.TABLE["select"]["choices"]) == set(_options.SELECT_KEYWORDS)
    q = torch.randn(1, 2, 256, 32)
    for mode, keyword in _options.SELECT_KEYWORDS.items():
        keywords = dict(heads_q=2, scale=0.1, is_causal=False, causal_align="top_left",
                        sim_threshold=0.5, cdf_threshold=None, topk=None, pv_threshold=50.0,
                        attention_sink=False, block_q=128, block_k=64, quantized=False,
                        backend="cpu")
        keywords[keyword] = 0.5
        options = _options.op_options(**keywords)
        assert options["select"] == mode and options["select_value"] == 0.5
        counts, _ = torch.ops.sparge.predict_block_mask(q, q, **options)
        assert counts.min() >= 1


def test_patch_passes_every_attention_keyword():
    from sparge import patch
    params = inspect.signature(sparge.attention).parameters
    keyword_only = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert patch._ATTENTION_OPTIONS == keyword_only - patch._PER_CALL
    assert {"cdf_threshold", "topk", "block_q", "quantized", "token_grid"} <= \
        patch._ATTENTION_OPTIONS


def test_documented_signature_lists_every_keyword():
    # docs/python.md once omitted `quantized=` from sparge.attention's signature.
    import pathlib
    import re
    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "python.md").read_text()
    block = re.search(r"out = sparge\.attention\(q, k, v,(.*?)\)\n", doc, re.S)
    assert block, "docs/python.md must show sparge.attention's signature"
    documented = set(re.findall(r"(\w+)=", block.group(1)))
    params = inspect.signature(sparge.attention).parameters
    assert documented == set(params) - {"q", "k", "v"}


def test_positional_parameters_are_sdpas():
    # A call to F.scaled_dot_product_attention with positional arguments (the mask is often the
    # 4th) ports by its name: sparge.attention's positional parameters are SDPA's, in its order,
    # and everything after them is keyword-only, as SDPA's scale and enable_gqa are.
    # (SDPA is a builtin without an inspectable signature; its schema: query, key, value,
    # attn_mask, dropout_p, is_causal, then keyword-only scale and enable_gqa.)
    params = inspect.signature(sparge.attention).parameters
    positional = [n for n, p in params.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional == ["q", "k", "v", "attn_mask", "dropout_p", "is_causal"]
    assert list(params)[6:8] == ["scale", "enable_gqa"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for n, p in params.items()
               if n not in positional)


def test_estimate_modes_reach_the_ops():
    # estimate / sample_rows are plain keywords: sparge.attention and predict_block_mask pass them
    # to the ops, whose C++ validation names the argument.
    from sparge import workloads
    assert _options.DEFAULTS["estimate"] == "auto" and _options.DEFAULTS["sample_rows"] == 4
    assert set(_options.TABLE["estimate"]["choices"]) == {"pooled", "sampled_rows", "auto"}
    w = workloads.language_like(heads_q=2, heads_kv=1, tokens=640, head_dim=32, seed=1)
    masks = {}
    for estimate in ("pooled", "sampled_rows"):
        out, stats = sparge.attention(w.q, w.k, w.v, is_causal=True, sim_threshold=-1.0,
                                      cdf_threshold=0.9, estimate=estimate, sample_rows=4,
                                      backend="cpu", return_stats=True)
        mask = sparge.predict_block_mask(w.q, w.k, is_causal=True, sim_threshold=-1.0,
                                         cdf_threshold=0.9, estimate=estimate, sample_rows=4,
                                         backend="cpu")
        assert torch.equal(mask.counts, stats.block_mask.counts) and torch.isfinite(out).all()
        masks[estimate] = mask.counts
    assert not torch.equal(masks["pooled"], masks["sampled_rows"])
    # "auto": sampled rows for this prefill (5 query blocks, no key blocks); the pooled map for a
    # query shorter than a block (a decode step), as tests/cpu/test_key_blocks.cc checks in C++.
    auto = sparge.predict_block_mask(w.q, w.k, is_causal=True, sim_threshold=-1.0,
                                     cdf_threshold=0.9, estimate="auto", backend="cpu")
    assert torch.equal(auto.counts, masks["sampled_rows"])
    step = {e: sparge.predict_block_mask(w.q[:, :, -3:], w.k, is_causal=True,
                                         causal_align="bottom_right", sim_threshold=-1.0,
                                         cdf_threshold=0.9, estimate=e, backend="cpu").counts
            for e in ("auto", "pooled")}
    assert torch.equal(step["auto"], step["pooled"])
    with pytest.raises(ValueError, match=r"SparseOptions.sample_rows must be in \[1, block_q = 128\], got 129"):
        sparge.attention(w.q, w.k, w.v, estimate="sampled_rows", sample_rows=129, backend="cpu")
    with pytest.raises(ValueError, match="estimate must be one of 'pooled', 'sampled_rows', 'auto'"):
        sparge.predict_block_mask(w.q, w.k, estimate="rows", backend="cpu")
