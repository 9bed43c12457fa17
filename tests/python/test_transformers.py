"""sparge.integrations.transformers: Sparge as Hugging Face transformers' attn_implementation
"sparge". The attention function on hand-made calls (GQA, causal flags, masks Sparge can and
cannot serve, windows, dropout), the options, and two real models against "sdpa":
all-MiniLM-L6-v2 (embeddings) and SmolLM2-135M (greedy generation). Tests that need
transformers or a model wheel skip, saying which is missing."""
import importlib.util
import math
import pathlib
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import sparge
from sparge.integrations import transformers as sparge_hf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench" / "eval"))
import real_models as rm  # noqa: E402

DENSE = dict(sim_threshold=1.0, cdf_threshold=1.0, pv_threshold=math.inf)  # skips nothing
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(
    not HAS_TRANSFORMERS, reason="transformers is not installed: pip install transformers==5.17.0")


def need_model(name):
    problem = rm._model_problem(name)
    if problem:
        pytest.skip(problem)


class Attention(torch.nn.Module):
    """What transformers' attention functions read from the calling layer."""

    def __init__(self, groups=1, is_causal=True):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = is_causal


def qkv(heads_q=4, heads_kv=2, seq_q=40, seq_k=None, head_dim=32, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    seq_k = seq_q if seq_k is None else seq_k
    return (torch.randn(batch, heads_q, seq_q, head_dim, generator=gen),
            torch.randn(batch, heads_kv, seq_k, head_dim, generator=gen),
            torch.randn(batch, heads_kv, seq_k, head_dim, generator=gen))


def sdpa_reference(q, k, v, **kwargs):
    """Float64 SDPA in transformers' output layout [B, N, H, D]."""
    mask = kwargs.get("attn_mask")
    if mask is not None and mask.is_floating_point():
        kwargs["attn_mask"] = mask.double()
    out = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), enable_gqa=True,
                                         **kwargs)
    return out.transpose(1, 2)


def fallback_warnings(caught):
    return [str(w.message) for w in caught if issubclass(w.category, sparge.SpargeFallbackWarning)]


# ------------------------------------------------------------------------- import, options

def test_import_sparge_imports_no_transformers():
    code = ("import sys, sparge; assert 'transformers' not in sys.modules; "
            "assert 'sparge.integrations.transformers' not in sys.modules; "
            "assert 'transformers' in dir(sparge.integrations); "
            "from sparge.integrations import transformers as t; t.configure(topk=0.5); "
            "assert 'transformers' not in sys.modules; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_configure_rejects_bad_options_naming_them():
    before = sparge_hf.active()
    with pytest.raises(TypeError, match=r"unknown Sparge option\(s\) \['cdf'\]"):
        sparge_hf.configure(cdf=0.9)
    with pytest.raises(ValueError, match=r"select_value \(cdf_threshold\) must be in"):
        sparge_hf.configure(cdf_threshold=2.0)
    with pytest.raises(ValueError, match=r"sim_threshold must be in"):
        sparge_hf.configure(sim_threshold=1.5)
    with pytest.raises(ValueError, match=r"pv_threshold must be in"):
        sparge_hf.configure(pv_threshold=-1.0)
    with pytest.raises(ValueError, match="give cdf_threshold or topk, not both"):
        sparge_hf.configure(cdf_threshold=0.9, topk=0.5)
    with pytest.raises(ValueError, match="block_q must be one of"):
        sparge_hf.configure(block_q=0)
    with pytest.raises(ValueError, match="min_seq_len must be an int >= 0"):
        sparge_hf.configure(min_seq_len=-1)
    with pytest.raises(TypeError, match="collect_stats must be a bool"):
        sparge_hf.configure(collect_stats="yes")
    with pytest.raises(TypeError, match="causal_align cannot be configured"):
        sparge_hf.configure(causal_align="bottom_right")
    assert sparge_hf.active() is before  # a rejected configuration changes nothing


def test_configure_applies_at_once_and_restores_as_a_context():
    before = sparge_hf.active()
    with sparge_hf.configure(topk=0.5, min_seq_len=16) as run:
        assert sparge_hf.active() is run
        assert run.options == {"topk": 0.5} and run.min_seq_len == 16
        with sparge_hf.configure(**DENSE) as inner:
            assert sparge_hf.active() is inner
        assert sparge_hf.active() is run
    assert sparge_hf.active() is before
    assert run.sparge_calls == 0 and run.fallbacks == {} and run.sparsity is None


# ---------------------------------------------------- the attention function on given calls

@pytest.mark.parametrize("causal", [True, False])
def test_gqa_call_matches_sdpa_without_mask(causal):
    q, k, v = qkv(seq_q=150, seed=1)
    with torch.no_grad(), sparge_hf.configure(**DENSE) as run:
        out, weights = sparge_hf.attention_forward(Attention(groups=2, is_causal=causal), q, k, v,
                                                   None, scaling=0.2)
    assert weights is None and out.shape == (2, 150, 4, 32) and out.is_contiguous()
    assert run.sparge_calls == 1 and run.fallbacks == {}
    torch.testing.assert_close(out.double(), sdpa_reference(q, k, v, is_causal=causal, scale=0.2),
                               atol=1e-5, rtol=0)


def test_is_causal_keyword_and_single_query_row_follow_sdpa():
    q, k, v = qkv(seq_q=30)
    module = Attention(groups=2, is_causal=True)
    with torch.no_grad(), sparge_hf.configure(**DENSE) as run:
        # is_causal given per call wins over the module's
        bidirectional, _ = sparge_hf.attention_forward(module, q, k, v, None, is_causal=False)
        # decoding: one query row sees every key
        step, _ = sparge_hf.attention_forward(module, q[:, :, -1:], k, v, None)
        # prefill into an empty static cache: more keys than queries, no mask
        prefill, _ = sparge_hf.attention_forward(module, q[:, :, :20], k, v, None)
    assert run.sparge_calls == 3 and run.fallbacks == {}
    torch.testing.assert_close(bidirectional.double(), sdpa_reference(q, k, v), atol=1e-5, rtol=0)
    torch.testing.assert_close(step.double(), sdpa_reference(q[:, :, -1:], k, v), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(prefill.double(),
                               sdpa_reference(q[:, :, :20], k, v, is_causal=True), atol=1e-5,
                               rtol=0)


def test_decoding_steps_keep_key_blocks_on_the_layer():
    # A decode loop against a growing cache: Stage 1 reads KeyBlocks kept on the module, built
    # once, extended by each new key, and built again when the cache stops continuing them.
    q, k, v = qkv(seq_q=300, seed=3)
    module = Attention(groups=2)
    settings = dict(topk=0.3, sim_threshold=-1.0)
    with torch.no_grad(), sparge_hf.configure(**settings) as run:
        first, _ = sparge_hf.attention_forward(module, q[:, :, 199:200], k[:, :, :200],
                                               v[:, :, :200], None)
        blocks = module._sparge_key_blocks
        assert blocks.tokens == 200 and blocks.max_tokens >= 400
        for n in range(201, 211):
            step, _ = sparge_hf.attention_forward(module, q[:, :, n - 1:n], k[:, :, :n],
                                                  v[:, :, :n], None)
            assert not torch.isnan(step).any()
        assert module._sparge_key_blocks is blocks and blocks.tokens == 210  # appended
        # An old key changed (a reordered beam, a new prompt of the same length): rebuilt.
        k2 = k.clone()
        k2[:, :, 209] += 1.0
        sparge_hf.attention_forward(module, q[:, :, 210:211], k2[:, :, :211], v[:, :, :211],
                                    None)
        assert module._sparge_key_blocks is not blocks
    assert run.sparge_calls == 12 and run.fallbacks == {}
    calls = []
    with torch.no_grad(), sparge_hf.configure(on_call=calls.append, **settings):
        sparge_hf.attention_forward(module, q[:, :, 210:211], k2[:, :, :211], v[:, :, :211],
                                    None)
    assert [(c.impl, c.seq_q, c.seq_k) for c in calls] == [("sparge", 1, 211)]
    assert calls[0].ms > 0 and calls[0].sparsity >= 0.0
    # Right after a build the step is the one without key blocks, bit for bit.
    with torch.no_grad(), sparge_hf.configure(decode_key_blocks=False, **settings):
        plain, _ = sparge_hf.attention_forward(Attention(groups=2), q[:, :, 199:200],
                                               k[:, :, :200], v[:, :, :200], None)
    assert torch.equal(first, plain)
    with pytest.raises(TypeError, match="decode_key_blocks must be a bool"):
        sparge_hf.configure(decode_key_blocks=1)


def causal_mask(seq_q, seq_k, bottom_right=False):
    offset = seq_k - seq_q if bottom_right else 0
    return torch.arange(seq_k)[None, :] <= torch.arange(seq_q)[:, None] + offset


def additive(mask):
    return torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)


@pytest.mark.parametrize("name,seq_q,seq_k,mask", [
    ("all-true", 40, 40, torch.ones(2, 1, 40, 40, dtype=torch.bool)),
    ("causal", 40, 40, causal_mask(40, 40).expand(2, 1, 40, 40)),
    ("causal, additive", 40, 40, additive(causal_mask(40, 40))[None, None]),
    ("causal, -inf", 40, 40, torch.zeros(40, 40).masked_fill(~causal_mask(40, 40), -math.inf)),
    ("chunk after a cache", 24, 70, causal_mask(24, 70, bottom_right=True)[None, None]),
    ("more queries than keys", 50, 30, causal_mask(50, 30)[None, None]),
])
def test_masks_that_say_nothing_more_than_flags_run_sparge(name, seq_q, seq_k, mask):
    q, k, v = qkv(seq_q=seq_q, seq_k=seq_k, seed=2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        with sparge_hf.configure(**DENSE) as run:
            out, _ = sparge_hf.attention_forward(Attention(groups=2), q, k, v, mask)
    assert run.sparge_calls == 1 and run.fallbacks == {}, name
    torch.testing.assert_close(out.double(), sdpa_reference(q, k, v, attn_mask=mask), atol=1e-5,
                               rtol=0)


@needs_transformers
def test_padding_masks_and_biases_run_sparge_on_cpu_and_softcap_falls_back():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    q, k, v = qkv(seq_q=40, seed=3)
    module = Attention(groups=2)
    padding = torch.ones(2, 1, 40, 40, dtype=torch.bool)
    padding[1, :, :, 30:] = False  # the second sequence is 30 tokens long
    padding &= causal_mask(40, 40)
    bias = additive(causal_mask(40, 40)) - 1.0
    masked = [dict(attention_mask=padding), dict(attention_mask=bias)]
    softcap = dict(attention_mask=None, softcap=30.0)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sparge_hf.configure(**DENSE) as run:
            for _ in range(2):  # twice: still one warning per reason
                for kwargs in masked:  # served with the mask itself (cpu)
                    out, _ = sparge_hf.attention_forward(module, q, k, v, **kwargs)
                    want = sdpa_reference(q, k, v, attn_mask=kwargs["attention_mask"])
                    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=0)
                out, _ = sparge_hf.attention_forward(module, q, k, v, **softcap)
                expected, _ = sdpa_attention_forward(module, q, k, v, **softcap)
                assert torch.equal(out, expected)  # transformers' own "sdpa", bit for bit
            # a sliding window runs Sparge's (test_window.py compares it with the masked "sdpa")
            sparge_hf.attention_forward(module, q, k, v, None, sliding_window=16)
    reasons = fallback_warnings(caught)
    assert len(reasons) == 1 and "softcap" in reasons[0], reasons
    assert list(run.fallbacks.values()) == [2] and run.sparge_calls == 5


@needs_transformers
def test_fallbacks_of_patch_sdpa_apply_too():
    q, k, v = qkv(seq_q=40, seed=4)
    module = Attention(groups=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sparge_hf.configure(min_seq_len=64) as run:
            with torch.no_grad():
                sparge_hf.attention_forward(module, q, k, v, None)
                sparge_hf.attention_forward(module, q.double(), k.double(), v.double(), None)
            grad_q = q.clone().requires_grad_()
            out, _ = sparge_hf.attention_forward(module, grad_q, k, v, None)
    out.sum().backward()
    assert grad_q.grad is not None  # SDPA served it, with autograd
    reasons = fallback_warnings(caught)
    assert len(reasons) == 3 and run.sparge_calls == 0
    for fragment in ("min_seq_len=64", "torch.float64", "inference-only"):
        assert any(fragment in r for r in reasons), (fragment, reasons)


def test_dropout_and_attention_sinks_raise():
    q, k, v = qkv()
    module = Attention(groups=2).train()
    with pytest.raises(RuntimeError, match=r"inference-only .*dropout=0.1 \(the module is in "
                                           r"training mode\): call model.eval\(\)"):
        sparge_hf.attention_forward(module, q, k, v, None, dropout=0.1)
    with pytest.raises(NotImplementedError, match=r"attention sinks \(s_aux\)"):
        sparge_hf.attention_forward(module.eval(), q, k, v, None, s_aux=torch.zeros(4))


@needs_transformers
def test_register_adds_the_name_to_both_registries():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    assert sparge_hf.register() == "sparge"
    assert AttentionInterface()["sparge"] is sparge_hf.attention_forward
    assert AttentionMaskInterface()["sparge"] is sdpa_mask
    assert "sparge" in AttentionInterface().valid_keys()


# ------------------------------------------------------------------------------ real models

@pytest.fixture(scope="module")
def one_thread():
    """The models run with one intra-op thread: on the shared 2-core CI machine, spinning
    OpenMP threads of tiny decoding steps cost more than they gain (3x slower generation)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def minilm(one_thread):
    need_model("minilm")
    sparge_hf.register()
    rm._quiet_transformers()
    from transformers import AutoModel, AutoTokenizer
    directory = rm._minilm_dir()
    model = AutoModel.from_pretrained(directory, attn_implementation="sparge").eval()
    return AutoTokenizer.from_pretrained(directory), model


@torch.no_grad()
def embeddings(model, encoded):
    hidden = model(**encoded).last_hidden_state
    weights = encoded["attention_mask"][..., None].to(hidden.dtype)
    return F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)  # the model's pooling


MINILM_TEXTS = [
    "The orchestra rehearsed the symphony for weeks before the opening night.",
    "Glaciers carve deep valleys as they slowly advance and retreat over centuries. " * 16,
    "Photosynthesis converts light energy into chemical energy stored in sugars. " * 5,
]


def test_minilm_sparge_matches_sdpa_on_single_sentences(minilm):
    tokenizer, model = minilm
    assert model.config._attn_implementation == "sparge"
    encoded = [tokenizer(t, return_tensors="pt") for t in MINILM_TEXTS]
    assert max(e["input_ids"].shape[1] for e in encoded) > 3 * 64  # several key blocks
    with sparge_hf.configure(**DENSE) as run:
        got = torch.cat([embeddings(model, e) for e in encoded])
    assert run.sparge_calls == model.config.num_hidden_layers * len(MINILM_TEXTS)
    assert run.fallbacks == {}
    model.set_attn_implementation("sdpa")
    try:
        expected = torch.cat([embeddings(model, e) for e in encoded])
    finally:
        model.set_attn_implementation("sparge")
    cosine = (got * expected).sum(-1)
    assert cosine.min().item() > 0.99999, cosine


def test_minilm_padded_batch_runs_sparge_with_the_padding_mask(minilm):
    tokenizer, model = minilm
    encoded = tokenizer(MINILM_TEXTS[:2], return_tensors="pt", padding=True)
    assert not encoded["attention_mask"].all()  # the batch is padded
    with sparge_hf.configure(**DENSE) as run:
        with warnings.catch_warnings():
            warnings.simplefilter("error", sparge.SpargeFallbackWarning)
            got = embeddings(model, encoded)
    assert run.sparge_calls == 6 and run.fallbacks == {}  # the six layers, masks on cpu
    model.set_attn_implementation("sdpa")
    try:
        expected = embeddings(model, encoded)
    finally:
        model.set_attn_implementation("sparge")
    cosine = torch.nn.functional.cosine_similarity(got.double(), expected.double(), dim=-1)
    assert cosine.min().item() > 0.99999, cosine


@pytest.fixture(scope="module")
def smollm2(one_thread):
    """The tokenizer and model of bench/eval/real_models.py (loaded once per process, shared
    with test_real_models.py: parsing the GGUF takes most of the time), "sdpa" when lent."""
    need_model("smollm2")
    sparge_hf.register()
    tokenizer, model = rm._load("smollm2", "cpu", torch.float32)
    yield tokenizer, model
    model.set_attn_implementation("sdpa")


PROMPT = "The three most important rules of software licensing are"


@torch.no_grad()
def greedy(tokenizer, model, tokens=20):
    ids = tokenizer(PROMPT, return_tensors="pt")
    return model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                          pad_token_id=tokenizer.eos_token_id)


def test_smollm2_greedy_generation_is_that_of_sdpa(smollm2):
    tokenizer, model = smollm2
    model.set_attn_implementation("sdpa")
    expected = greedy(tokenizer, model)
    model.set_attn_implementation("sparge")
    with sparge_hf.configure(**DENSE) as run:
        got = greedy(tokenizer, model)
    assert torch.equal(got, expected), (tokenizer.decode(got[0]), tokenizer.decode(expected[0]))
    layers = model.config.num_hidden_layers
    assert run.sparge_calls == layers * 20 and run.fallbacks == {}  # prefill + 19 steps
    # The 19 decoding steps took Stage 1's key side from each layer's KeyBlocks (the default).
    covered = [m._sparge_key_blocks.tokens for m in model.modules()
               if hasattr(m, "_sparge_key_blocks")]
    assert covered == [got.shape[1] - 1] * layers


def test_smollm2_default_settings_report_sparsity(smollm2):
    tokenizer, model = smollm2
    model.set_attn_implementation("sparge")
    _, ids = rm.inputs("smollm2")[0]
    ids = ids[:, :512]  # 4 x 8 tiles of 128 x 64 per head
    with torch.no_grad(), sparge_hf.configure(collect_stats=True) as run:
        logits = model(input_ids=ids).logits
        greedy(tokenizer, model, tokens=4)
    assert torch.isfinite(logits).all()
    assert run.sparge_calls == model.config.num_hidden_layers * 5 and run.fallbacks == {}
    assert run.options == {} and 0.0 <= run.sparsity < 1.0  # the defaults skip little here
    with torch.no_grad(), sparge_hf.configure(collect_stats=True, sim_threshold=0.3,
                                              cdf_threshold=0.9, pv_threshold=10.0,
                                              estimate="pooled") as sparse:
        model(input_ids=ids)
    assert sparse.sparsity > 0.05 and sparse.fallbacks == {}


# ------------------------------------------------------------------------- tune plans
def tiny_llama():
    import transformers
    config = transformers.LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=2, head_dim=32,
                                      max_position_embeddings=512)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@needs_transformers
def test_configure_takes_a_tune_plan_as_patch_sdpa_does(tmp_path):
    # A plan for one of the two layers (cdf 0.3 per head with every block judged similar: a
    # sparse selection). "sparge" under configure(plan=...) must give what "sdpa" gives under
    # patch_sdpa(plan=...) (the same Sparge calls, layer by layer), visibly not what it gives
    # without the plan, and warn once about the layer the plan leaves out.
    sparge_hf.register()
    model = tiny_llama()
    ids = torch.randint(0, 101, (1, 300), generator=torch.Generator().manual_seed(3))
    plan = sparge.TunePlan(0.05, {"sim_threshold": -1.0, "estimate": "sampled_rows"}, {
        "model.layers.0.self_attn": sparge.LayerPlan(
            cdf_threshold=[0.3, 0.3], pv_threshold=math.inf, calls=1,
            error_estimate=[0.0, 0.0], sparsity=0.5)})
    plan.save(tmp_path / "plan.json")
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        with warnings.catch_warnings(record=True) as caught_patch:
            warnings.simplefilter("always")
            with sparge.patch_sdpa(plan=plan, model=model, **DENSE):
                patched = model(ids).logits
        model.set_attn_implementation("sparge")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with sparge_hf.configure(plan=tmp_path / "plan.json", model=model, **DENSE) as run:
                planned = model(ids).logits
        with sparge_hf.configure(**DENSE):
            dense = model(ids).logits
    assert run.sparge_calls == 2 and not run.fallbacks
    torch.testing.assert_close(planned, patched, rtol=0, atol=1e-5)
    assert (planned - dense).abs().max() > 1e-3  # the plan's layer skipped tiles
    unplanned = [str(w.message) for w in caught if "not in the tune plan" in str(w.message)]
    assert len(unplanned) == 1 and "model.layers.1.self_attn" in unplanned[0], unplanned
    assert any("not in the tune plan" in str(w.message) for w in caught_patch)


@needs_transformers
def test_mla_model_runs_every_layer_in_sparge():
    """A tiny DeepSeek-V3 (multi-head latent attention, random weights): its attention calls
    have v narrower than q and k (qk 24 = 16 + 8 rope channels, v 16), which SDPA takes and
    Sparge now serves under both patch_sdpa and attn_implementation "sparge", with the logits
    of "sdpa" when nothing is skipped."""
    import transformers
    config = transformers.DeepseekV3Config(
        vocab_size=101, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, q_lora_rank=None,
        kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
        first_k_dense_replace=1, max_position_embeddings=512)
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(config).eval()
    ids = torch.randint(0, 101, (1, 300), generator=torch.Generator().manual_seed(3))
    sparge_hf.register()
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        expected = model(ids).logits
        with sparge.patch_sdpa(min_seq_len=0, **DENSE) as patch:
            patched = model(ids).logits
        model.set_attn_implementation("sparge")
        with sparge_hf.configure(**DENSE) as run:
            served = model(ids).logits
    assert patch.sparge_calls == 2 and patch.fallbacks == {}
    assert run.sparge_calls == 2 and not run.fallbacks
    torch.testing.assert_close(patched, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(served, expected, rtol=0, atol=1e-5)


@needs_transformers
def test_configure_plan_needs_its_model():
    plan = sparge.TunePlan(0.05, {}, {})
    with pytest.raises(TypeError, match="plan and model go together"):
        sparge_hf.configure(plan=plan)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        sparge_hf.configure(plan=plan, model="model")


def test_the_call_options_reach_the_dense_mask_decision(monkeypatch):
    # _plan hands the call's Sparge options to patch._general_mask_reason (on cuda they decide
    # whether the dense-mask path takes the mask): a mask that is no band must reach it with them,
    # not with the band reading's None.
    seen = []

    def general(attn_mask, query, scores, options=None):
        seen.append(options)
        return None

    monkeypatch.setattr(sparge.patch, "_general_mask_reason", general)
    q, k, _ = qkv(heads_q=2, heads_kv=2, seq_q=40, batch=1)
    mask = torch.ones(1, 1, 40, 40, dtype=torch.bool)
    mask[0, 0, :, 5] = False  # a hole: neither all-true, a band nor right padding
    options = dict(topk=0.5, target_error=0.0)
    reason, got = sparge_hf._plan(Attention(), q, k, mask, {}, options)
    assert reason is None and got["attn_mask"] is mask
    assert seen == [options]
