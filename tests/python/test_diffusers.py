"""sparge.integrations.diffusers: the "sparge" backend of diffusers' attention dispatch, run on
real diffusers transformers (WanTransformer3DModel, FluxTransformer2DModel) built from tiny
configs with random weights, on the CPU in float32."""
import functools
import json
import math
import pathlib
import warnings

import pytest
import torch
import torch.nn.functional as F

diffusers = pytest.importorskip(
    "diffusers", reason="diffusers is not installed: the diffusers backend tests need it "
    "(scripts/test_python.sh pins it)")

import sparge  # noqa: E402
import sparge.integrations.diffusers as sd  # noqa: E402
from diffusers.models import attention_dispatch  # noqa: E402
from diffusers.models.transformers import transformer_wan  # noqa: E402

# Nothing skipped: no block is self-similar enough, TopCdf keeps every tile, λ = inf.
EXACT = dict(sim_threshold=1.0, cdf_threshold=1.0, pv_threshold=math.inf)
TEXT_TOKENS = 8


@pytest.fixture(autouse=True)
def restore_diffusers_backend():
    """set_attention_backend changes diffusers' global active backend: put it back."""
    registry = attention_dispatch._AttentionBackendRegistry
    active, default = registry._active_backend, sd._default
    yield
    registry._active_backend = active
    if sd._default is not default:
        sd._default.detach()
        sd._default = default


def wan_model(num_layers=2):
    torch.manual_seed(0)
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=num_layers,
        rope_max_seq_len=64).eval()


def wan_inputs(frames=2, height=16, width=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, frames, height, width, generator=gen)
    return latents, torch.tensor([500]), torch.randn(1, TEXT_TOKENS, 16, generator=gen)


def flux_model():
    torch.manual_seed(0)
    return diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
        axes_dims_rope=(4, 6, 6)).eval()


def flux_inputs(height=12, width=12, seed=2):
    gen = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
    return dict(hidden_states=torch.randn(1, height * width, 8, generator=gen),
                encoder_hidden_states=torch.randn(1, TEXT_TOKENS, 16, generator=gen),
                pooled_projections=torch.randn(1, 16, generator=gen),
                timestep=torch.tensor([0.5]), img_ids=img_ids, txt_ids=torch.zeros(TEXT_TOKENS, 3))


@pytest.fixture
def spy_attention(monkeypatch):
    """Records the token_grid / grid_offset of every sparge.attention call."""
    calls = []
    real = sparge.ops.attention

    @functools.wraps(real)  # the same signature, which patch.py inspects
    def attention(q, k, v, **kwargs):
        calls.append((kwargs.get("token_grid"), kwargs.get("grid_offset", 0), q.shape, k.shape))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(sparge.ops, "attention", attention)
    return calls


def errors(got, ref):
    diff = (got.double() - ref.double()).abs()
    return diff.max().item(), (diff.sum() / ref.double().abs().sum()).item()


def test_sparge_is_a_diffusers_backend():
    sd.register()
    names = attention_dispatch.AttentionBackendName
    assert names("sparge").value == "sparge" and names("sparge") in \
        attention_dispatch._AttentionBackendRegistry.list_backends()
    sd.register()  # idempotent: one member, one registration
    assert [m for m in names if m.value == "sparge"] == [names("sparge")]


def test_exact_settings_match_native_on_wan(spy_attention):
    model, inputs = wan_model(), wan_inputs()
    with torch.no_grad():
        ref = model(*inputs).sample
        with sd.attention_backend(model, grid="auto", min_seq_len=0, **EXACT) as run:
            got = model(*inputs).sample
    max_abs, rel_l1 = errors(got, ref)
    print(f"\nWan, sparge (nothing skipped) vs native: max abs {max_abs:.2e}, rel L1 {rel_l1:.2e}")
    assert max_abs < 1e-5 and rel_l1 < 1e-6
    assert list(run.stats) == run.layer_names == \
        ["blocks.0.attn1", "blocks.0.attn2", "blocks.1.attn1", "blocks.1.attn2"]
    for name, counts in run.stats.items():
        assert counts.calls == counts.sparge_calls == 1 and counts.fallbacks == {}, name
        # The latents [1, 4, 2, 16, 16] with patch (1, 2, 2) are a 2x8x8 grid: self-attention
        # (attn1) runs in Hilbert order, cross-attention to the text (attn2) in natural order.
        assert counts.grid_calls == (1 if name.endswith("attn1") else 0), name
    assert [c[:2] for c in spy_attention] == [((2, 8, 8), 0), (None, 0)] * 2


@pytest.mark.parametrize("text_position,offset", [("first", TEXT_TOKENS), ("last", 0)])
def test_exact_settings_match_native_on_flux_with_text_tokens(spy_attention, text_position,
                                                              offset):
    model, inputs = flux_model(), flux_inputs()
    with torch.no_grad():
        ref = model(**inputs).sample
        with sd.attention_backend(model, grid=(1, 12, 12), text_position=text_position,
                                  min_seq_len=0, collect_stats=True, **EXACT) as run:
            got = model(**inputs).sample
    max_abs, rel_l1 = errors(got, ref)
    print(f"\nFlux ({text_position}), sparge vs native: max abs {max_abs:.2e}, "
          f"rel L1 {rel_l1:.2e}")
    assert max_abs < 1e-5 and rel_l1 < 1e-6
    total = run.total
    assert total.calls == total.sparge_calls == total.grid_calls == 2 and total.fallbacks == {}
    assert total.sparsity == 0.0 and total.tiles_dense > 0
    # Flux prepends its 8 text tokens: with text_position="first" the grid starts after them.
    assert [c[:2] for c in spy_attention] == [((1, 12, 12), offset)] * 2
    assert spy_attention[0][2] == (1, 144 + TEXT_TOKENS, 2, 16)  # [B, N, H, D]


def test_set_attention_backend_after_register():
    model, inputs = wan_model(), wan_inputs()
    with torch.no_grad():
        ref = model(*inputs).sample
        backend = sd.register(model, min_seq_len=0, **EXACT)
        model.set_attention_backend("sparge")
        got = model(*inputs).sample
        model.reset_attention_backend()
        # diffusers' own context manager selects it too, with register()'s settings.
        with diffusers.attention_backend("sparge"):
            again = model(*inputs).sample
    assert sd.current_backend() is backend
    assert errors(got, ref)[0] < 1e-5 and torch.equal(got, again)
    assert backend.total.sparge_calls == 8 and backend.total.fallbacks == {}


def test_default_settings_report_sparsity_per_layer():
    model = wan_model()
    with torch.no_grad():  # q = k and larger q/k norms: peaked, local attention to skip
        for block in model.blocks:
            block.attn1.to_k.load_state_dict(block.attn1.to_q.state_dict())
            block.attn1.norm_q.weight.mul_(3)
            block.attn1.norm_k.weight.mul_(3)
    latents, timestep, text = wan_inputs(frames=4, height=32, width=32)
    latents = F.interpolate(latents[:, :, :, :4, :4], size=(4, 32, 32), mode="trilinear")
    with torch.no_grad():
        ref = model(latents, timestep, text).sample
        with pytest.warns(sparge.SpargeFallbackWarning, match="min_seq_len=128"):
            with sd.attention_backend(model, grid="auto", collect_stats=True) as default:
                got_default = model(latents, timestep, text).sample
        with sd.attention_backend(model, grid="auto", collect_stats=True, sim_threshold=0.0,
                                  cdf_threshold=0.9) as lower:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", sparge.SpargeFallbackWarning)
                got_lower = model(latents, timestep, text).sample
    print("\n" + default.report() + "\n" + lower.report())
    for run, got, bound in ((default, got_default, 0.02), (lower, got_lower, 0.2)):
        assert errors(got, ref)[1] < bound
        for name, counts in run.stats.items():
            assert counts.calls == 1, name
            if name.endswith("attn1"):  # 4x16x16 = 1024 video tokens, Hilbert order
                assert counts.sparge_calls == counts.grid_calls == 1 and counts.tiles_dense > 0
                assert 0.0 <= counts.sparsity < 1.0
            else:  # cross-attention to 8 text tokens: shorter than min_seq_len
                assert list(counts.fallbacks) == ["sequence shorter than min_seq_len=128"]
    assert all(lower.stats[f"blocks.{i}.attn1"].sparsity > 0.3 for i in (0, 1))
    assert "sparsity" in default.report() and "blocks.1.attn1" in default.report()


def test_schedule_runs_dense_steps_and_layers_densely(spy_attention):
    model, inputs = wan_model(), wan_inputs()
    schedule = sd.Schedule(dense_steps=2, dense_layers={"blocks.1"})
    with torch.no_grad():
        ref = model(*inputs).sample
        with sd.attention_backend(model, min_seq_len=0, schedule=schedule, **EXACT) as run:
            outputs = []
            for step in range(3):
                outputs.append(model(*inputs).sample)
                schedule.on_step_end(None, step, None, {})  # what a pipeline's callback does
    assert schedule.step_index == 3
    # Steps 0 and 1: every call dense (PyTorch's SDPA, the native path bit for bit).
    assert torch.equal(outputs[0], ref) and torch.equal(outputs[1], ref)
    stats = run.stats
    assert [stats[n].dense_calls for n in run.layer_names] == [2, 2, 3, 3]
    assert [stats[n].sparge_calls for n in run.layer_names] == [1, 1, 0, 0]
    assert len(spy_attention) == 2  # only blocks.0 in step 2 reached sparge.attention
    assert errors(outputs[2], ref)[0] < 1e-5

    # Layers by index (model order of the attention modules), steps advanced by hand.
    schedule = sd.Schedule(dense_layers={0, 3})
    calls = []
    with torch.no_grad(), sd.attention_backend(model, min_seq_len=0, schedule=schedule,
                                               on_call=calls.append) as run:
        model(*inputs)
        schedule.step()
        model(*inputs)
    assert schedule.step_index == 1
    assert [run.stats[n].dense_calls for n in run.layer_names] == [2, 0, 0, 2]
    assert [run.stats[n].sparge_calls for n in run.layer_names] == [0, 2, 2, 0]
    # The on_call hook saw every call: the schedule's dense ones and Sparge's, timed.
    assert [c.impl for c in calls].count("sdpa") == 4 and len(calls) == 8
    assert all(c.reason == "dense by the schedule" and c.ms is None
               for c in calls if c.impl == "sdpa")
    assert all(c.ms > 0 and 0.0 <= c.sparsity <= 1.0 for c in calls if c.impl == "sparge")


def test_fallbacks_are_counted_and_match_torch():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 200, 2, 16, generator=gen) for _ in range(3))  # [B, N, H, D]
    mask = torch.rand(200, 200, generator=gen) > 0.3
    hnd = [t.transpose(1, 2) for t in (q, k, v)]
    q_grad = q.clone().requires_grad_(True)
    with sd.attention_backend(min_seq_len=0, **EXACT) as run:
        # Gradients still fall back (Sparge is inference-only); masks are served on the CPU.
        with pytest.warns(sparge.SpargeFallbackWarning, match="gradients requested"):
            grad = attention_dispatch.dispatch_attention_fn(q_grad, k, v)
        masked = attention_dispatch.dispatch_attention_fn(q, k, v, attn_mask=mask)
        plain = attention_dispatch.dispatch_attention_fn(q, k, v)
        with pytest.raises(NotImplementedError, match="context parallelism"):
            attention_dispatch.dispatch_attention_fn(q, k, v, parallel_config=object())
    counts = run.stats[sd.UNKNOWN_LAYER]  # no model: no layer names
    assert counts.sparge_calls == 2 and list(counts.fallbacks.values()) == [1]
    assert torch.equal(grad, F.scaled_dot_product_attention(q_grad.transpose(1, 2), *hnd[1:])
                       .transpose(1, 2))
    assert errors(masked, F.scaled_dot_product_attention(*hnd, attn_mask=mask)
                  .transpose(1, 2))[0] < 1e-5
    assert errors(plain, F.scaled_dot_product_attention(*hnd).transpose(1, 2))[0] < 1e-5


def test_bad_arguments_raise_errors_naming_them():
    model = wan_model(num_layers=1)
    cases = [
        (dict(grid=(0, 4, 4)), ValueError, "grid must be"),
        (dict(grid=(2, 4)), ValueError, "grid must be"),
        (dict(grid="hilbert"), ValueError, "grid must be None, 'auto'"),
        (dict(text_position="middle"), ValueError, "text_position must be one of"),
        (dict(schedule={"dense_steps": 2}), TypeError, "schedule must be"),
        (dict(min_seq_len=-1), ValueError, "min_seq_len must be an int >= 0"),
        (dict(collect_stats=1), TypeError, "collect_stats must be a bool"),
        (dict(cdf=0.9), TypeError, r"unknown Sparge option\(s\) \['cdf'\]"),
        (dict(cdf_threshold=2.0), ValueError, r"select_value \(cdf_threshold\) must be in"),
        (dict(block_q=0), ValueError, "block_q must be one of"),
        (dict(token_grid=(1, 2, 2)), TypeError, "token_grid is not an option"),
        (dict(schedule=sd.Schedule(dense_layers={2})), ValueError,
         "dense_layers holds 2, but the model has 2 attention layers"),
        (dict(schedule=sd.Schedule(dense_layers={"blocks.7"})), ValueError,
         "dense_layers holds 'blocks.7', which names no attention layer"),
    ]
    for settings, error, message in cases:
        with pytest.raises(error, match=message):
            sd.attention_backend(model, **settings)
    with pytest.raises(ValueError, match="grid='auto' reads the grid from the model"):
        sd.attention_backend(grid="auto")
    with pytest.raises(ValueError, match="dense_layers=...\\) needs the model"):
        sd.register(schedule=sd.Schedule(dense_layers={0}))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        sd.attention_backend("transformer")
    with pytest.raises(ValueError, match="dense_steps must be an int >= 0"):
        sd.Schedule(dense_steps=-1)
    with pytest.raises(TypeError, match="dense_layers must be a set or list"):
        sd.Schedule(dense_layers=3)
    with pytest.raises(ValueError, match="dense_layers must hold layer indices"):
        sd.Schedule(dense_layers={-1})


def test_a_changed_diffusers_gives_a_clear_error(monkeypatch):
    class Registry:  # a registry without the attributes the adapter relies on
        pass

    monkeypatch.setattr(attention_dispatch, "_AttentionBackendRegistry", Registry)
    with pytest.raises(RuntimeError, match=r"cannot add the 'sparge' attention backend to "
                                           r"diffusers .*_AttentionBackendRegistry lacks"):
        sd.register()


def test_bench_diffusers_smoke_mode(monkeypatch, tmp_path, capsys):
    """bench/gpu/bench_diffusers.py --device cpu --tiny: a 2-layer Wan (256 video tokens, 16 text
    tokens) through the four settings, its tables and its docs/bench-schema.md records."""
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[2] / "bench" / "gpu"))
    import bench_diffusers

    dispatch = transformer_wan.dispatch_attention_fn
    with pytest.warns(sparge.SpargeFallbackWarning, match="min_seq_len=128"):
        records = bench_diffusers.main(["--device", "cpu", "--tiny", "--commit", "test",
                                        "--out-dir", str(tmp_path)])
    assert transformer_wan.dispatch_attention_fn is dispatch  # the timing wrapper is gone
    [path] = tmp_path.glob("*_cpu_diffusers-wan-256.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == records
    forward = {r["setting"]: r for r in records if r["scope"] == "forward"}
    assert list(forward) == ["native", "defaults", "sparse", "exact"]
    assert forward["native"]["impl"] == "diffusers-native" and \
        {r["impl"] for r in forward.values()} == {"diffusers-native", "diffusers-sparge"}
    for r in records:  # the schema's fields, the per-layer timings positive
        assert {"date", "device", "commit", "impl", "workload", "dtype", "head_dim", "batch",
                "heads_q", "heads_kv", "seq_q", "seq_k", "causal", "sparsity", "ms", "tops",
                "rel_l1", "cos_sim"} <= set(r) and r["ms"] > 0 and r["seq_q"] == 256
    assert forward["exact"]["rel_l1"] < 1e-5 and forward["exact"]["cos_sim"] > 0.99999
    # topk=0.1 of 4 key blocks keeps one: 3 of 4 self-attention tiles skipped.
    assert forward["sparse"]["sparsity"] == 0.75 and forward["defaults"]["sparsity"] < 0.75
    layers = [r for r in records if r["setting"] == "defaults" and r["scope"] != "forward"]
    assert [(r["layer"], r["scope"], r["seq_k"], r["served_by"]) for r in layers] == [
        ("blocks.0.attn1", "self-attention", 256, "sparge"),
        ("blocks.0.attn2", "cross-attention", 16, "sdpa"),  # 16 text tokens < min_seq_len
        ("blocks.1.attn1", "self-attention", 256, "sparge"),
        ("blocks.1.attn2", "cross-attention", 16, "sdpa")]
    out = capsys.readouterr().out
    assert "| setting | options | forward ms |" in out and "| blocks.1.attn2 | cross |" in out


def test_a_tune_plan_applies_per_layer_as_under_patch_sdpa(tmp_path):
    # A plan for blocks.0.attn1 (cdf 0.3 per head, every block judged similar: sparse): the
    # backend with plan=... gives what patch_sdpa(plan=...) gives on diffusers' native backend
    # (the same Sparge calls, layer by layer), visibly not what it gives without the plan, and
    # warns once per attention layer the plan leaves out.
    model, inputs = wan_model(), wan_inputs()
    plan = sparge.TunePlan(0.05, {"sim_threshold": -1.0, "estimate": "sampled_rows"}, {
        "blocks.0.attn1": sparge.LayerPlan(cdf_threshold=[0.3, 0.3], pv_threshold=math.inf,
                                           calls=1, error_estimate=[0.0, 0.0], sparsity=0.5)})
    plan.save(tmp_path / "plan.json")
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sparge.patch_sdpa(plan=plan, model=model, min_seq_len=0, **EXACT):
            patched = model(*inputs).sample
        with sd.attention_backend(model, plan=tmp_path / "plan.json", min_seq_len=0,
                                  **EXACT) as run:
            planned = model(*inputs).sample
        with sd.attention_backend(model, min_seq_len=0, **EXACT):
            exact = model(*inputs).sample
    assert run.total.sparge_calls == 4 and run.total.fallbacks == {}
    torch.testing.assert_close(planned, patched, rtol=0, atol=1e-5)
    assert (planned - exact).abs().max() > 1e-3  # the plan's layer skipped tiles
    unplanned = sorted(str(w.message) for w in caught if "not in the tune plan" in str(w.message))
    assert len(unplanned) == 6, unplanned  # 3 layers, once under each of the two
    with pytest.raises(TypeError, match="plan needs the model"):
        sd.attention_backend(plan=plan)
