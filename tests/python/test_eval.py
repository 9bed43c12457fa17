"""The evaluation report's bookkeeping (bench/eval): Pareto fronts, the sparsity-at-bound lookup,
the naive baseline masks, the reference, the sweep's exactness and the real-model plumbing."""
import math
import random
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sparge
from sparge import measure, workloads

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "eval"))

import baselines  # noqa: E402
import pareto  # noqa: E402
import real_eval  # noqa: E402
import reference  # noqa: E402
import summary  # noqa: E402
import sweep  # noqa: E402
from records import Budget, Recorder  # noqa: E402


# ------------------------------------------------------------------------------ Pareto front
def test_pareto_front_on_a_hand_made_list():
    points = [(0.0, 0.001), (0.5, 0.01), (0.5, 0.02), (0.3, 0.03), (0.8, 0.05), (0.9, 0.2),
              (0.7, 0.5), (0.95, float("nan")), (None, 0.1)]
    # (0.5, 0.02) and (0.3, 0.03) are dominated by (0.5, 0.01); (0.7, 0.5) by (0.8, 0.05).
    assert pareto.pareto_front(points) == [0, 1, 4, 5]


def test_pareto_front_is_monotone_and_dominates_every_point():
    rng = random.Random(7)
    points = [(rng.random(), rng.random() ** 3) for _ in range(300)]
    front = pareto.pareto_front(points)
    pts = [points[i] for i in front]
    for (s0, e0), (s1, e1) in zip(pts, pts[1:]):
        assert s1 > s0 and e1 > e0          # sparser costs strictly more error
    for s, e in points:                      # every point is matched or beaten by the front
        assert any(fs >= s and fe <= e for fs, fe in pts)


def test_sparsity_at_bound_on_a_hand_made_list():
    points = [(0.0, 1e-6), (0.4, 0.015), (0.6, 0.02), (0.6, 0.019), (0.7, 0.06), (0.9, 0.09),
              (0.95, 0.3), (0.99, float("nan"))]
    assert pareto.sparsity_at_bound(points, 0.02) == (0.6, 3)   # ties: the lower error
    assert pareto.sparsity_at_bound(points, 0.05) == (0.6, 3)
    assert pareto.sparsity_at_bound(points, 0.1) == (0.9, 5)
    assert pareto.sparsity_at_bound(points, 1e-7) == (None, None)
    # The lookup agrees with the front: the answer is a front point.
    front = pareto.pareto_front(points)
    for bound in pareto.BOUNDS:
        assert pareto.sparsity_at_bound(points, bound)[1] in front


# ------------------------------------------------------------------------------ baselines
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("target", [0.25, 0.5, 0.8, 0.95])
def test_baseline_masks_have_the_requested_sparsity(causal, target):
    seq, heads = 4096 + 100, 3  # a tail block, and causal rows of every length
    allowed = sparge.allowed_key_blocks(seq, seq, 128, 64, causal)
    tiles = int(allowed.sum())
    for mask in (baselines.window_mask(1, heads, seq, seq, target, causal=causal),
                 baselines.random_mask(1, heads, seq, seq, target, causal=causal, seed=1)):
        assert abs(mask.sparsity - target) <= 1.0 / tiles + 1e-12
        dense = mask.to_dense()
        # Only allowed tiles, the same count per query block for every head.
        j = torch.arange(dense.shape[-1])
        assert not (dense & (j[None, :] >= allowed[:, None])).any()
        counts = dense.sum(-1)
        assert (counts == counts[:, :1]).all() and (counts[0, 0] >= 1).all()


def test_window_mask_is_local():
    seq = 4096
    mask = baselines.window_mask(1, 1, seq, seq, 0.8, causal=False).to_dense()[0, 0]
    for i, row in enumerate(mask):
        kept = row.nonzero().flatten()
        assert kept.numel() and (kept.diff() == 1).all()        # one contiguous run
        centre = (2 * i + 1) * 128 // 2 // 64                      # the query block's keys
        assert kept.min() <= centre <= kept.max()
    causal = baselines.window_mask(1, 1, seq, seq, 0.8, causal=True).to_dense()[0, 0]
    allowed = sparge.allowed_key_blocks(seq, seq, 128, 64, True)
    for i, row in enumerate(causal):
        kept = row.nonzero().flatten()
        assert row[allowed[i] - 1]                                # the most recent block
        if kept.numel() >= 2:
            assert row[0]                                         # and the sink block


def test_random_mask_depends_on_the_seed_only():
    a = baselines.random_mask(1, 2, 2048, 2048, 0.7, seed=3).to_dense()
    b = baselines.random_mask(1, 2, 2048, 2048, 0.7, seed=3).to_dense()
    c = baselines.random_mask(1, 2, 2048, 2048, 0.7, seed=4).to_dense()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0, 0], a[0, 1])                      # heads draw differently


# ------------------------------------------------------------------------------ reference
@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_sdpa_in_float64(causal, monkeypatch):
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 300 * 64)  # several query chunks
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 300, 32, generator=gen)
    k, v = torch.randn(1, 2, 300, 32, generator=gen), torch.randn(1, 2, 300, 32, generator=gen)
    ref = reference.reference_attention(q, k, v, causal=causal, scale=0.2)
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal,
                                          scale=0.2, enable_gqa=True)
    assert ref.dtype == torch.float64
    torch.testing.assert_close(ref, want, atol=1e-12, rtol=0)
    assert measure.rel_l1(ref, want) < 1e-12 and abs(measure.cosine(ref, want) - 1) < 1e-12


# ------------------------------------------------------------------------------ the sweep
def _case(spec_kind="video-grid"):
    w = workloads.video_grid(heads=2, grid=(4, 16, 16), head_dim=64) if spec_kind == \
        "video-grid" else workloads.language_like(heads_q=2, heads_kv=1, tokens=1024)
    spec = types.SimpleNamespace(name="t", kind=spec_kind)
    return sweep.Case(spec, w, "cpu", torch.float32)


def test_nothing_skipped_is_exact_and_sparse_settings_cost_accuracy():
    case = _case()
    for order in case.orders:
        dense, _ = sweep.run_sparge(case, sweep._setting("dense").options, order, False)
        assert dense["sparsity"] == 0 and dense["rel_l1"] < 1e-5 and dense["cos_sim"] > 1 - 1e-9
        sparse, mask = sweep.run_sparge(case, dict(cdf_threshold=0.5, sim_threshold=-0.1,
                                                   pv_threshold=math.inf), order, False)
        assert sparse["sparsity"] > 0.3 and sparse["rel_l1"] > dense["rel_l1"]
        assert mask.sparsity == sparse["sparsity"]
    full = sweep.run_baseline(case, "window", 0.0, "hilbert")
    assert full["sparsity"] == 0 and full["rel_l1"] < 1e-5


def test_hilbert_order_keeps_the_errors():
    # Baselines run on pre-ordered tokens; their reference is reordered with them.
    case = _case()
    q, k, v, ref = case.ordered("hilbert")
    out = sparge.attention(q, k, v, sim_threshold=1.0, pv_threshold=math.inf)
    assert measure.rel_l1(out, ref) < 1e-5
    assert not torch.equal(q, case.q)


def test_sweep_records_every_setting_and_baseline(tmp_path):
    case = _case("llm-like")
    rec = Recorder(tmp_path / "r.jsonl", "cpu", "test", log=lambda _: None)
    out = sweep.sweep(case, rec, Budget(600), small=True, quantized_ok=True)
    grid = sweep.settings(True, small=True)
    assert len(out) == 2 * len(grid) + 2 * len(sweep.BASELINE_SPARSITIES)
    assert {r["impl"] for r in out} == {"sparge-exact", "sparge-quant", "baseline-window",
                                        "baseline-random"}
    for r in out:
        for field in ("date", "device", "commit", "impl", "workload", "dtype", "head_dim",
                      "batch", "heads_q", "heads_kv", "seq_q", "seq_k", "causal", "sparsity",
                      "ms", "tops", "rel_l1", "cos_sim"):
            assert field in r
    assert all(r["causal"] for r in out)
    quant_dense = [r for r in out if r["impl"] == "sparge-quant" and r["family"] == "dense"]
    assert 1e-5 < quant_dense[0]["rel_l1"] < 0.05   # int8/fp8 costs a little, not much
    rows, _ = summary.bound_table(out)
    assert {(r[1], r[2]) for r in rows} == {("Sparge", "token order"),
                                           ("Sparge int8/fp8", "token order"),
                                           ("window", "token order"),
                                           ("random blocks", "token order")}


def test_sweep_stops_when_the_budget_is_spent(tmp_path):
    rec = Recorder(tmp_path / "r.jsonl", "cpu", "test", log=lambda _: None)
    assert sweep.sweep(_case(), rec, Budget(0), small=True, quantized_ok=False) == []
    assert rec.notes and "budget" in rec.notes[0]


# ------------------------------------------------------------------------------ real models
def _stub_real_models(seq=256):
    """A stand-in with the interface of bench/eval/real_models.py."""
    gen = torch.Generator().manual_seed(0)

    def capture(name, device, dtype):
        return [types.SimpleNamespace(name=name, layer=i, q=torch.randn(1, 2, seq, 32,
                                                                        generator=gen) * 2,
                                      k=torch.randn(1, 2, seq, 32, generator=gen) * 2,
                                      v=torch.randn(1, 2, seq, 32, generator=gen), scale=0.2,
                                      causal=True, token_grid=None) for i in range(2)]

    calls = []

    def end_to_end(name, device, dtype, options):
        calls.append(options)
        if options is None:
            return dict(metric="logits_kl", value=0.0, sparsity=0.0, per_input=[{}])
        sparsity = 0.0 if options.get("sim_threshold") == 1.0 else 0.5
        return dict(metric="logits_kl", value=sparsity / 10, sparsity=sparsity, per_input=[{}])

    module = types.SimpleNamespace(
        SOURCES={"toy": types.SimpleNamespace(name="toy", model="toy model", causal=True,
                                              metric="logits_kl", input_desc="noise"),
                 "gone": types.SimpleNamespace(name="gone", model="missing", causal=False,
                                               metric="embedding_cos", input_desc="")},
        available=lambda name: name == "toy", why_unavailable=lambda name: "no weights",
        capture=capture, end_to_end=end_to_end)
    return module, calls


def test_real_models_through_the_interface(tmp_path, monkeypatch):
    module, calls = _stub_real_models()
    monkeypatch.setitem(sys.modules, "real_models", module)
    rec = Recorder(tmp_path / "r.jsonl", "cpu", "test", log=lambda _: None)
    out = real_eval.run(rec, Budget(600), "cpu", torch.float32, small=True)
    assert any("gone" in n and "no weights" in n for n in rec.notes)
    grid = real_eval.settings(small=True, causal=True)
    assert any(s.options.get("attention_sink") for s in grid)
    layers = [r for r in out if r["section"] == "real-layers"]
    e2e = [r for r in out if r["section"] == "real-e2e"]
    assert len(layers) == 2 * len(grid) and len(e2e) == len(grid) + 1
    assert calls[0] is None and all(c["min_seq_len"] == 0 for c in calls[1:])
    dense = [r for r in e2e if r["family"] == "dense"][0]
    assert dense["layers_rel_l1"] < 1e-5 and dense["layers_sparsity"] == 0
    # The table picks, per bound, the sparsest setting whose pooled layer error is in bound.
    for case, bound, row, ref in summary.real_table(out):
        assert case == "toy" and ref["impl"] == "unpatched"
        ok = [r for r in e2e if r["impl"] == "sparge-exact" and r["layers_rel_l1"] <= bound]
        assert row["layers_sparsity"] == max(r["layers_sparsity"] for r in ok)


# ------------------------------------------------------------------------------ speed points
def test_speed_points_are_the_dense_point_and_a_spread_of_the_front():
    import speed  # its GPU parts are not run here; pick_points is plain bookkeeping
    rng = random.Random(3)
    rows = [dict(impl="sparge-exact", order="hilbert", family="dense", setting="dense",
                 sparsity=0.0, rel_l1=1e-6)]
    rows += [dict(impl="sparge-exact", order="hilbert", family="cdf", setting=f"p{i}",
                  sparsity=rng.random(), rel_l1=rng.random() * 0.1) for i in range(60)]
    rows += [dict(impl="baseline-window", order="hilbert", family="baseline", setting="w",
                  sparsity=0.99, rel_l1=1e-9)]   # baselines are never timed as Sparge
    picked = speed.pick_points(rows, "hilbert")
    assert picked[0]["family"] == "dense" and 2 <= len(picked) <= speed.MAX_POINTS + 1
    front = [rows[i] for i in pareto.pareto_front([(r["sparsity"], r["rel_l1"]) for r in rows
                                                   if r["impl"] == "sparge-exact"])]
    assert all(p in front for p in picked[1:])
    assert picked[1]["sparsity"] == min(r["sparsity"] for r in front if r["sparsity"] > 0)
    assert picked[-1]["sparsity"] == max(r["sparsity"] for r in front)
