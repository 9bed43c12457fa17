"""The report's README.md, written from the records (report.jsonl) alone."""
from pareto import BOUNDS, sparsity_at_bound
from plots import ORDER_NAMES
from records import cases, number
from sweep import BASELINE_SPARSITIES

PATH_NAMES = {"sparge-exact": "Sparge", "sparge-quant": "Sparge int8/fp8",
              "baseline-window": "window", "baseline-random": "random blocks"}


def _fmt(x, digits=3):
    x = number(x)
    return "–" if x is None else f"{x:.{digits}f}"


def _rate(r):
    tops = r["tops"]
    return f"{r['ms']:.3f} ({tops:.0f})" if tops >= 10 else f"{r['ms']:.3f} ({tops:.2f})"


def _shape(r):
    heads = f"{r['heads_q']}/{r['heads_kv']}" if r["heads_q"] != r["heads_kv"] else r["heads_q"]
    return f"{r['seq_q']} | {heads} | {r['head_dim']} | {'yes' if r['causal'] else 'no'}"


def bound_table(records):
    """Rows (case, path, order) -> the sparsity reached under each bound, and the settings."""
    rows, settings = [], []
    for case in cases(records, "accuracy"):
        recs = [r for r in records if r.get("section") == "accuracy" and r["case"] == case]
        for impl in PATH_NAMES:
            for order in ORDER_NAMES:
                pts = [r for r in recs if r["impl"] == impl and r["order"] == order]
                if not pts:
                    continue
                cells = []
                for bound in BOUNDS:
                    s, i = sparsity_at_bound([(p["sparsity"], number(p["rel_l1"]))
                                              for p in pts], bound)
                    cells.append(s)
                    if i is not None and impl.startswith("sparge"):
                        p = pts[i]
                        settings.append((case, PATH_NAMES[impl], ORDER_NAMES[order], bound,
                                         p["setting"], p["sparsity"], p["rel_l1"], p["cos_sim"]))
                floor = [p["rel_l1"] for p in pts if p.get("family") == "dense"]
                rows.append((recs[0], PATH_NAMES[impl], ORDER_NAMES[order], cells,
                             floor[0] if floor else None))
    return rows, settings


def real_table(records):
    """Per real model and bound: the setting of largest layer sparsity whose pooled layer
    relative L1 is within the bound, and its end-to-end metric."""
    out = []
    for case in cases(records, "real-e2e"):
        recs = [r for r in records if r.get("section") == "real-e2e" and r["case"] == case]
        ref = [r for r in recs if r["impl"] == "unpatched"]
        runs = [r for r in recs if r["impl"] == "sparge-exact"]
        for bound in BOUNDS:
            _, i = sparsity_at_bound([(r["layers_sparsity"], number(r["layers_rel_l1"]))
                                      for r in runs], bound)
            out.append((case, bound, runs[i] if i is not None else None,
                        ref[0] if ref else None))
    return out


def header(records, notes, meta, level="#") -> list:
    first = records[0] if records else {}
    lines = [f"{level} Sparge evaluation report: {meta.get('device', first.get('device', '?'))}",
             "",
             f"Date {first.get('date', '?')}, commit `{first.get('commit', '?')}`, made by "
             f"`{meta.get('command', 'bash bench/report.sh')}` in {meta.get('elapsed_s', 0):.0f} s "
             f"(budget {meta.get('budget_s', 0):.0f} s; threshold grid "
             f"{meta.get('grid', '?')}). Records: `report.jsonl` ({len(records)} lines, "
             "docs/bench-schema.md fields plus `section`, `case`, `order`, `setting`, "
             "`options`, ...).",
             "",
             "Accuracy is measured against full attention of the same inputs in "
             f"{meta.get('reference', 'float32')} (relative L1 = ‖o − o_ref‖₁ / ‖o_ref‖₁; "
             "cosine similarity of the flattened outputs). Sparsity is the fraction of the "
             "128×64 tiles that dense attention (causal attention for causal workloads) "
             "computes and the mask skips; the λ skip inside computed tiles is in "
             "`pv_skip_fraction`, not in it."]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return lines


def bound_section(records, level="##") -> list:
    rows, _ = bound_table(records)
    if not rows:
        return []
    lines = ["", f"{level} Sparsity reached at relative L1 ≤ 0.02, 0.05, 0.1", "",
             "The largest tile sparsity among the sweep's points whose relative L1 is "
             "within the bound (– : no point is). Sparge rows sweep the thresholds "
             "(`options` in the records); window and random-block baselines were run at "
             f"sparsities {', '.join(f'{s:g}' for s in BASELINE_SPARSITIES)} in the same "
             "token order. *floor*: the error of the same path with nothing skipped "
             "(arithmetic and, for int8/fp8, quantization).", "",
             "| workload | tokens | heads | head dim | causal | path | order | ≤ 0.02 | "
             "≤ 0.05 | ≤ 0.1 | floor |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, path, order, cells, floor in rows:
        values = " | ".join(_fmt(c) for c in cells)
        path_cell = f"**{path}**" if path == "Sparge" else path
        floor = "" if floor is None else f"{number(floor):.1e}"
        lines.append(f"| {r['case']} | {_shape(r)} | {path_cell} | {order} | {values} | "
                     f"{floor} |")
    return lines


def real_section(records, level="##", every=True) -> list:
    real = real_table(records)
    if not real:
        return []
    lines = ["", f"{level} Real models: end-to-end metric at those bounds", "",
             "Per bound, the setting with the largest pooled tile sparsity of the captured "
             "layers whose pooled relative L1 is within the bound, and the whole model's "
             "metric under `sparge.patch_sdpa` with that setting (sparsity as the patch "
             "measured it; embedding_cos: mean cosine similarity of the embeddings to the "
             "unpatched model's, logits_kl: mean KL divergence of the next-token "
             "distributions, in nats).", "",
             "| model | bound | setting | layers rel L1 | layers sparsity | metric | value "
             "| e2e sparsity |", "|---|---|---|---|---|---|---|---|"]
    for case, bound, r, _ in real:
        if r is None:
            lines.append(f"| {case} | ≤ {bound:g} | – | | | | | |")
            continue
        lines.append(f"| {case} | ≤ {bound:g} | {r['setting']} | {_fmt(r['layers_rel_l1'], 4)}"
                     f" | {_fmt(r['layers_sparsity'])} | {r['metric']} | "
                     f"{_fmt(r['value'], 6)} | {_fmt(r['sparsity'])} |")
    if not every:
        return lines
    lines += ["", "Every real-model setting:", "",
              "| model | setting | layers rel L1 | layers min cos | layers sparsity | metric "
              "| value | e2e sparsity |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r.get("section") == "real-e2e":
            lines.append(f"| {r['case']} | {r['setting']} | "
                         f"{_fmt(r.get('layers_rel_l1'), 4)} | "
                         f"{_fmt(r.get('layers_cos_sim_min'), 5)} | "
                         f"{_fmt(r.get('layers_sparsity'))} | {r['metric']} | "
                         f"{_fmt(r['value'], 6)} | {_fmt(r['sparsity'])} |")
    return lines


def speed_section(records, level="##") -> list:
    speed = [r for r in records if r.get("section") == "speed"]
    if not speed:
        return []
    lines = ["", f"{level} Speed vs sparsity", "",
             "Median ms (CUDA events after warm-up) and dense-equivalent TOPS. "
             "sparge: both stages through `sparge.attention` (Hilbert gather and scatter "
             "included); stage 1: `predict_block_mask` alone; stage 2: "
             "`block_sparse_attention` on the predicted mask; flex: FlexAttention on the same "
             "tile mask; SDPA: dense. Stages 1 and 2 and flex run on tokens already in order.",
             "", "| workload | setting | sparsity | rel L1 | sparge ms (TOPS) | stage 1 ms | "
             "stage 2 ms (TOPS) | flex ms (TOPS) |", "|---|---|---|---|---|---|---|---|"]
    for case in cases(records, "speed"):
        recs = [r for r in speed if r["case"] == case]
        for r in recs:
            if r["impl"] in ("sdpa-cudnn", "sdpa-flash"):
                lines.append(f"| {case} | {r['impl']} (dense) | 0 | {_fmt(r['rel_l1'], 4)}"
                             f" | {_rate(r)} | | | |")
        for r in recs:
            if r["impl"] != "sparge-exact":
                continue
            cell = {}
            for impl in ("sparge-stage1", "sparge-stage2", "flex"):
                m = [x for x in recs if x["impl"] == impl and x["setting"] == r["setting"]]
                cell[impl] = "–" if not m else _rate(m[0]) if m[0]["tops"] is not None \
                    else f"{m[0]['ms']:.3f}"
            lines.append(f"| {case} | {r['setting']} | {_fmt(r['sparsity'])} | "
                         f"{_fmt(r['rel_l1'], 4)} | {_rate(r)} | {cell['sparge-stage1']} | "
                         f"{cell['sparge-stage2']} | {cell['flex']} |")
    return lines


# The selection modes side by side: (name, section, which of its Sparge records). The best fixed
# TopCdf and TopK are the sweep's points of that family (every sim_threshold, pooled estimate);
# the rest are bench/eval/selection.py's.
SELECTION_MODES = (
    ("TopCdf, best fixed", "accuracy", lambda r: r.get("family") == "cdf"),
    ("TopK, best fixed", "accuracy", lambda r: r.get("family") == "topk"),
    ("error target", "error-target", lambda r: True),
    ("TopCdf pooled", "calibration", lambda r: r.get("estimate") == "pooled"),
    ("TopCdf sampled_rows", "calibration", lambda r: r.get("estimate") == "sampled_rows"),
)


def _selection_cases(records) -> list:
    """(case, order) pairs that have error-target or calibration records, in run order."""
    seen = []
    for r in records:
        if r.get("section") in ("error-target", "calibration") and \
                (r["case"], r["order"]) not in seen:
            seen.append((r["case"], r["order"]))
    return seen


def _sparge(records, section, case, order, keep=lambda r: True) -> list:
    return [r for r in records if r.get("section") == section and r["impl"] == "sparge-exact"
            and r["case"] == case and r["order"] == order and keep(r)]


def mode_bound_table(records) -> list:
    """Rows (case, order, mode, [sparsity reached at each of BOUNDS or None]) for the modes of
    SELECTION_MODES that have points."""
    rows = []
    for case, order in _selection_cases(records):
        for mode, section, keep in SELECTION_MODES:
            pts = _sparge(records, section, case, order, keep)
            if pts:
                rows.append((case, order, mode, [
                    sparsity_at_bound([(p["sparsity"], number(p["rel_l1"])) for p in pts],
                                      bound)[0] for bound in BOUNDS]))
    return rows


def target_table(records) -> list:
    """Per error-target record: (record, heads within ε, heads, best fixed TopK record whose
    measured rel L1 is ≤ ε or None)."""
    rows = []
    for case, order in _selection_cases(records):
        topk = _sparge(records, "accuracy", case, order, lambda r: r.get("family") == "topk")
        for r in _sparge(records, "error-target", case, order):
            eps = r["target_error"]
            heads = [number(e) for e in r["head_rel_l1"]]
            _, best = sparsity_at_bound([(t["sparsity"], number(t["rel_l1"])) for t in topk],
                                        eps)
            rows.append((r, sum(e <= eps for e in heads), len(heads),
                         None if best is None else topk[best]))
    return rows


def heads_within_target(records) -> dict:
    """{ε: (heads whose measured rel L1 is ≤ ε, heads)} over every (workload, order, head)."""
    counts = {}
    for r, within, heads, _ in target_table(records):
        a, b = counts.get(r["target_error"], (0, 0))
        counts[r["target_error"]] = (a + within, b + heads)
    return dict(sorted(counts.items()))


def calibration_table(records):
    """(τs, rows (case, order, estimate, {τ: record}, mean |kept mass − τ|))."""
    calib = [r for r in records if r.get("section") == "calibration"]
    taus = sorted({r["cdf_threshold"] for r in calib})
    rows = []
    for case, order in _selection_cases(records):
        for estimate in dict.fromkeys(r["estimate"] for r in calib):
            by_tau = {r["cdf_threshold"]: r for r in _sparge(
                records, "calibration", case, order, lambda r: r["estimate"] == estimate)}
            if by_tau:
                gap = sum(abs(r["kept_mass"] - t) for t, r in by_tau.items()) / len(by_tau)
                rows.append((case, order, estimate, by_tau, gap))
    return taus, rows


def selection_section(records, level="##") -> list:
    bounds = mode_bound_table(records)
    if not bounds:
        return []
    sub = level + "#"
    lines = ["", f"{level} Selection modes: the error target and a calibrated τ", "",
             "Issue 11's modes on the same inputs and reference, exact path, every block judged "
             "self-similar (sim −0.1) and λ = ∞: `target_error=ε` (per head and call the "
             "sparsest TopCdf mass whose estimated relative L1 is within ε, section "
             "`error-target` of the records) and TopCdf with `estimate=\"sampled_rows\"` (4 "
             "exact rows per query block, so that τ should be the share of the attention mass "
             "kept) beside the default `pooled` map (section `calibration`). Per-head lists in "
             "the records are in (batch, head) order."]
    lines += ["", f"{sub} Sparsity at relative L1 ≤ 0.02, 0.05, 0.1 per mode", "",
              "The largest tile sparsity among a mode's points whose relative L1 (whole "
              "output) is within the bound (–: none is). Best fixed TopCdf / TopK: the "
              "sweep's points of that family, every `sim_threshold` (one threshold for the "
              "whole workload, picked with hindsight); error target: its runs at ε = " +
              ", ".join(f"{t:g}" for t in sorted({r["target_error"] for r in records
                                                  if r.get("section") == "error-target"})) +
              "; TopCdf pooled / sampled_rows: the calibration runs below.", "",
              "| workload | order | mode | ≤ 0.02 | ≤ 0.05 | ≤ 0.1 |",
              "|---|---|---|---|---|---|"]
    for case, order, mode, cells in bounds:
        lines.append(f"| {case} | {ORDER_NAMES[order]} | {mode} | "
                     f"{' | '.join(_fmt(c) for c in cells)} |")
    targets = target_table(records)
    if targets:
        within = heads_within_target(records)
        share = "; ".join(f"ε = {eps:g}: {a} of {b} ({100 * a / b:.1f}%)"
                          for eps, (a, b) in within.items() if b)
        lines += ["", f"{sub} Error target: requested ε against the measured error", "",
                  f"(workload, head) pairs whose measured relative L1 is ≤ ε: {share}. "
                  "Per run: the tile sparsity, the whole output's relative L1, the heads "
                  "within ε and the worst head's error, the TopCdf mass the heads chose "
                  "(min–max), and the best fixed TopK of the sweep whose whole-output "
                  "relative L1 is ≤ ε (gap: the error target's sparsity minus its).", "",
                  "| workload | order | ε | sparsity | rel L1 | heads ≤ ε | worst head | "
                  "chosen mass | best fixed TopK ≤ ε | its sparsity | gap |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r, ok, heads, best in targets:
            chosen = [number(x) for x in r["head_select_value"]]
            worst = max(number(e) for e in r["head_rel_l1"])
            best_cells = "– | – | –" if best is None else \
                f"{best['setting']} | {_fmt(best['sparsity'])} | " \
                f"{r['sparsity'] - best['sparsity']:+.3f}"
            lines.append(f"| {r['case']} | {ORDER_NAMES[r['order']]} | {r['target_error']:g} | "
                         f"{_fmt(r['sparsity'])} | {_fmt(r['rel_l1'], 4)} | {ok} of {heads} | "
                         f"{_fmt(worst, 4)} | {min(chosen):.3f}–{max(chosen):.3f} | "
                         f"{best_cells} |")
    taus, calib = calibration_table(records)
    if calib:
        lines += ["", f"{sub} Calibration: requested τ against the measured kept mass", "",
                  "Cells: the true attention mass inside the kept tiles (from the dense "
                  "softmax of the same inputs; mean over query blocks and heads) and, in "
                  "brackets, the tile sparsity. Last column: the mean over τ of |kept mass − "
                  "τ| (the calibrated mode aims at ≤ 0.02).", "",
                  "| workload | order | estimate | " +
                  " | ".join(f"τ = {t:g}" for t in taus) + " | mean abs(kept − τ) |",
                  "|---|---|---|" + "---|" * len(taus) + "---|"]
        for case, order, estimate, by_tau, gap in calib:
            cells = [f"{by_tau[t]['kept_mass']:.3f} ({by_tau[t]['sparsity']:.2f})"
                     if t in by_tau else "" for t in taus]
            lines.append(f"| {case} | {ORDER_NAMES[order]} | {estimate} | {' | '.join(cells)} "
                         f"| {gap:.3f} |")
    return lines


def images_section(images, meta, level="##", prefix="") -> list:
    if images:
        return ["", f"{level} Plots", ""] + [f"![{name}]({prefix}{name})" for name in images]
    if meta.get("plots_note"):
        return ["", f"{level} Plots", "", meta["plots_note"]]
    return []


def settings_section(records, level="##") -> list:
    _, settings = bound_table(records)
    if not settings:
        return []
    lines = ["", f"{level} Settings that reached the bounds", "",
             "| workload | path | order | bound | setting | sparsity | rel L1 | cos |",
             "|---|---|---|---|---|---|---|---|"]
    for case, path, order, bound, setting, s, err, cos in settings:
        lines.append(f"| {case} | {path} | {order} | ≤ {bound:g} | {setting} | {_fmt(s)} | "
                     f"{_fmt(err, 4)} | {_fmt(cos, 5)} |")
    return lines


def markdown(records, notes, meta, images) -> str:
    """The report directory's README.md."""
    lines = header(records, notes, meta) + bound_section(records) + \
        selection_section(records) + real_section(records) + speed_section(records) + \
        images_section(images, meta) + settings_section(records)
    return "\n".join(lines) + "\n"


def docs_block(records, notes, meta, images, report_dir: str) -> str:
    """The same report as a block of docs/results.md (one heading level down, images and the
    report linked from docs/)."""
    prefix = f"../{report_dir}/"
    lines = header(records, notes, meta, level="###") + [
        "", f"Full report: [`{report_dir}/README.md`]({prefix}README.md)."]
    lines += bound_section(records, "####") + selection_section(records, "####") + \
        real_section(records, "####", every=False) + \
        speed_section(records, "####") + images_section(images, meta, "####", prefix)
    return "\n".join(lines) + "\n"
