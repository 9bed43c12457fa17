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
import calibration  # noqa: E402
import error_target_subset_study  # noqa: E402
import pareto  # noqa: E402
import plots  # noqa: E402
import real_eval  # noqa: E402
import reference  # noqa: E402
import selection  # noqa: E402
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


# ------------------------------------------------------------------------------ selection modes
@pytest.mark.parametrize("causal", [False, True])
def test_block_mass_is_the_dense_softmax_mass_of_each_tile(causal, monkeypatch):
    # 2 query blocks per chunk over 3 (the last partial), 5 key blocks (the last partial), GQA.
    monkeypatch.setattr(calibration, "CHUNK_ELEMENTS", 2 * 128 * 300)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 300, 32, generator=gen) * 2
    k = torch.randn(1, 2, 300, 32, generator=gen) * 2
    mass = calibration.block_mass(q, k, causal=causal, scale=0.2)
    assert mass.shape == (1, 4, 3, 5) and mass.dtype == torch.float64
    for h in range(4):
        s = q[0, h].double() @ k[0, h // 2].double().T * 0.2
        if causal:
            s = s.masked_fill(torch.ones(300, 300, dtype=torch.bool).triu(1), -math.inf)
        p = torch.softmax(s, dim=-1)
        for i in range(3):
            for j in range(5):
                want = p[i * 128:(i + 1) * 128, j * 64:(j + 1) * 64].sum(1).mean()
                assert abs(float(mass[0, h, i, j]) - float(want)) < 1e-12
    torch.testing.assert_close(mass.sum(-1), torch.ones(1, 4, 3, dtype=torch.float64))
    if causal:  # query block 0 (rows < 128) sees no key past 127
        assert float(mass[0, :, 0, 2:].abs().max()) == 0
    everything = torch.ones(mass.shape, dtype=torch.bool)
    torch.testing.assert_close(calibration.kept_mass(mass, everything),
                               torch.ones(1, 4, dtype=torch.float64))
    assert float(calibration.kept_mass(mass, ~everything).abs().max()) == 0
    first = everything.clone()
    first[..., 1:] = False
    torch.testing.assert_close(calibration.kept_mass(mass, first), mass[..., 0].mean(-1))
    with pytest.raises(ValueError):
        calibration.kept_mass(mass, everything[..., 1:])


def test_head_rel_l1_pools_to_the_whole_output_error():
    gen = torch.Generator().manual_seed(2)
    ref = torch.randn(2, 3, 50, 16, generator=gen, dtype=torch.float64)
    out = ref + 0.01 * torch.randn(ref.shape, generator=gen, dtype=torch.float64) * \
        torch.arange(1, 7, dtype=torch.float64).view(2, 3, 1, 1)   # heads differ
    heads = calibration.head_rel_l1(out, ref)
    assert len(heads) == 6 and heads == sorted(heads)              # (batch, head) order
    norms = [float(ref[b, h].abs().sum()) for b in range(2) for h in range(3)]
    pooled = sum(e * n for e, n in zip(heads, norms)) / sum(norms)
    assert abs(pooled - measure.rel_l1(out, ref)) < 1e-12


@pytest.fixture(scope="module")
def mode_records(tmp_path_factory):
    """Sweep and selection-mode records of a small grid workload (both orders) and a causal
    one, as the report makes them."""
    rec = Recorder(tmp_path_factory.mktemp("modes") / "r.jsonl", "cpu", "test",
                   log=lambda _: None)
    out = []
    for kind in ("video-grid", "llm-like"):
        case = _case(kind)
        case.name = kind
        out += sweep.sweep(case, rec, Budget(600), small=True, quantized_ok=False)
        out += selection.run(case, rec, Budget(600), small=True)
    return out


def test_error_target_records_carry_the_target_and_per_head_measures(mode_records):
    targets = [r for r in mode_records if r["section"] == "error-target"]
    # 2 orders of the grid workload and 1 of the causal one, every target.
    assert len(targets) == 3 * len(selection.TARGETS)
    for r in targets:
        assert r["impl"] == "sparge-exact" and r["target_error"] in selection.TARGETS
        assert r["options"]["target_error"] == r["target_error"]
        heads = r["heads_q"] * r["batch"]
        for field in ("head_rel_l1", "head_select_value", "head_error_estimate",
                      "head_kept_mass"):
            assert len(r[field]) == heads
        assert all(0 < t <= 1 for t in r["head_select_value"])
        # The whole output's error is a norm-weighted mean of the heads'.
        assert min(r["head_rel_l1"]) - 1e-12 <= r["rel_l1"] <= max(r["head_rel_l1"]) + 1e-12
        # The library's CPU test allows 1.5 ε on any head (and ≥ 95% within ε).
        assert max(r["head_rel_l1"]) <= 1.5 * r["target_error"]
    for case, order in {(r["case"], r["order"]) for r in targets}:
        runs = sorted((r for r in targets if (r["case"], r["order"]) == (case, order)),
                      key=lambda r: r["target_error"])
        assert [r["sparsity"] for r in runs] == sorted(r["sparsity"] for r in runs)


def test_calibration_records_keep_a_mass_in_0_1_that_grows_with_tau(mode_records):
    calib = [r for r in mode_records if r["section"] == "calibration"]
    assert len(calib) == 3 * len(selection.ESTIMATES) * len(selection.taus(True))
    for r in calib:
        assert r["options"]["estimate"] == r["estimate"] and \
            r["options"]["cdf_threshold"] == r["cdf_threshold"]
        assert 0 <= r["kept_mass"] <= 1 + 1e-9
        assert all(0 <= m <= 1 + 1e-9 for m in r["head_kept_mass"])
        assert abs(r["kept_mass"] - sum(r["head_kept_mass"]) / len(r["head_kept_mass"])) < 1e-9
    for key in {(r["case"], r["order"], r["estimate"]) for r in calib}:
        # A larger τ keeps a prefix at least as long of the same ranking: never less mass.
        runs = sorted((r for r in calib if (r["case"], r["order"], r["estimate"]) == key),
                      key=lambda r: r["cdf_threshold"])
        kept = [r["kept_mass"] for r in runs]
        assert all(b >= a - 1e-12 for a, b in zip(kept, kept[1:])), (key, kept)


def _tables(lines):
    """The Markdown tables among lines: [[row cells, ...], ...] without the separator rows."""
    tables, current = [], None
    for line in lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = []
                tables.append(current)
            if not all(set(c) <= {"-"} for c in cells):
                current.append(cells)
        else:
            current = None
    return tables


def _value(cell):
    return None if cell == "–" else float(cell)


def test_selection_section_tables_parse_and_agree_with_the_records(mode_records):
    lines = summary.selection_section(mode_records)
    modes, targets, calib = _tables(lines)
    for table in (modes, targets, calib):
        assert len({len(row) for row in table}) == 1          # every row has the header's cells
    # Sparsity at each bound: the three bound cells are numbers or –, and each mode's value is
    # the best of its points under the bound.
    assert modes[0] == ["workload", "order", "mode", "≤ 0.02", "≤ 0.05", "≤ 0.1"]
    names = [m[0] for m in summary.SELECTION_MODES]
    for case, order, mode, *cells in modes[1:]:
        assert mode in names
        for bound, cell in zip(pareto.BOUNDS, cells):
            value = _value(cell)
            assert value is None or 0 <= value <= 1
        if mode == "error target":
            order_key = "hilbert" if order == "Hilbert" else "original"
            runs = [r for r in mode_records if r["section"] == "error-target"
                    and r["case"] == case and r["order"] == order_key]
            want = [max([r["sparsity"] for r in runs if r["rel_l1"] <= b], default=None)
                    for b in pareto.BOUNDS]
            assert [_value(c) for c in cells] == [None if w is None else round(w, 3)
                                                  for w in want]
    assert len(modes) - 1 == 3 * len(summary.SELECTION_MODES)
    # The heads-within-ε shares are the records' counts.
    within = summary.heads_within_target(mode_records)
    for eps, (ok, pairs) in within.items():
        runs = [r for r in mode_records if r["section"] == "error-target"
                and r["target_error"] == eps]
        assert pairs == sum(len(r["head_rel_l1"]) for r in runs)
        assert ok == sum(e <= eps for r in runs for e in r["head_rel_l1"])
        assert f"ε = {eps:g}: {ok} of {pairs}" in "\n".join(lines)
    assert len(targets) - 1 == 3 * len(selection.TARGETS)
    # Calibration: one row per (workload, order, estimate); its last cell is the mean |kept − τ|.
    assert len(calib) - 1 == 3 * len(selection.ESTIMATES)
    for case, order, estimate, *cells in calib[1:]:
        kept = [float(c.split()[0]) for c in cells[:-1]]
        gap = sum(abs(m - t) for m, t in zip(kept, selection.taus(True))) / len(kept)
        assert abs(float(cells[-1]) - gap) <= 0.003             # rounded cells
    assert summary.selection_section([]) == []


def test_selection_plots(mode_records, tmp_path):
    pytest.importorskip("matplotlib")
    assert plots.calibration(mode_records, tmp_path) == ["calibration.png"]
    assert plots.error_target(mode_records, tmp_path) == ["error_target.png"]
    assert (tmp_path / "calibration.png").stat().st_size > 1000
    assert plots.calibration([], tmp_path) == [] and plots.error_target([], tmp_path) == []


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


# ------------------------------------------------------------- the error-target subset study
@pytest.mark.parametrize("kind", ["video", "llm-like"])
def test_subset_study_reimplements_the_library_choice(kind):
    """The study's torch error target (every block, 16 rows) chooses the library's τ per head,
    and its measured error of that choice is the block-sparse output's against dense."""
    if kind == "video":
        w = workloads.video_grid(heads=2, grid=(4, 16, 16), head_dim=32, seed=3)
    else:
        w = workloads.language_like(heads_q=2, heads_kv=1, tokens=1024, head_dim=32, seed=5)
    target = 0.02
    out, stats = sparge.attention(w.q, w.k, w.v, is_causal=w.causal, sim_threshold=-1.0,
                                  target_error=target, return_stats=True)
    group = w.q.shape[1] // w.k.shape[1]
    taus = error_target_subset_study.TAUS
    for h in range(w.q.shape[1]):
        head = error_target_subset_study.Head(w.q[0, h].double(), w.k[0, h // group].double(),
                                              w.v[0, h // group].double(), w.causal, [16])
        g, _ = head.choose(16, 1, target)
        tau = 1.0 if g == len(taus) else taus[g]
        assert tau == pytest.approx(float(stats.select_value.flatten()[h]), abs=1e-6)
        l1, sparsity = head.measured(head.mask(16, g))
        kv = h // group
        ref = reference.reference_attention(w.q[:, h:h + 1].double(), w.k[:, kv:kv + 1].double(),
                                            w.v[:, kv:kv + 1].double(), causal=w.causal)
        lib_l1 = measure.rel_l1(out[:, h:h + 1].double(), ref)
        assert 0.2 < sparsity < 1.0  # the case skips tiles (0.41-0.51 on these inputs)
        assert l1 == pytest.approx(lib_l1, rel=1e-3, abs=1e-6)  # the same mask, the same error
        assert l1 <= 1.5 * target
