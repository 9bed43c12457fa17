"""The report's PNG plots, drawn from the records alone (so --md-from can redraw them):
accuracy vs sparsity with the Pareto fronts, speed vs sparsity, the real models' end-to-end
metric vs sparsity, the calibration of τ and the error target; and the predicted-mask pictures,
drawn during the run from live masks. Every function returns the file names it wrote ([] without
matplotlib)."""
from pathlib import Path

from pareto import BOUNDS, pareto_front
from records import cases, number


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt, fig, out_dir, name) -> None:
    """Writes one figure as <out_dir>/<name> (every plot of the report at the same resolution)."""
    fig.savefig(Path(out_dir) / name, dpi=110, bbox_inches="tight")
    plt.close(fig)


def available() -> bool:
    return _pyplot() is not None


ORDER_NAMES = {"hilbert": "Hilbert", "original": "token order"}
STYLE = {  # (impl, order) -> colour, marker
    ("sparge-exact", "hilbert"): ("tab:blue", "o"),
    ("sparge-exact", "original"): ("tab:cyan", "o"),
    ("sparge-quant", "hilbert"): ("tab:purple", "D"),
    ("sparge-quant", "original"): ("tab:pink", "D"),
    ("baseline-window", "hilbert"): ("tab:orange", "s"),
    ("baseline-window", "original"): ("tab:brown", "s"),
    ("baseline-random", "hilbert"): ("tab:gray", "x"),
    ("baseline-random", "original"): ("black", "x"),
}


def _title(case, r):
    heads = f"{r['heads_q']}/{r['heads_kv']}" if r["heads_q"] != r["heads_kv"] else r["heads_q"]
    return (f"{case}: {r['seq_q']} tokens, {heads} heads, d {r['head_dim']}, {r['dtype']}"
            f"{', causal' if r['causal'] else ''}")


def accuracy(records, out_dir) -> list:
    plt = _pyplot()
    if plt is None:
        return []
    written = []
    for case in cases(records, "accuracy"):
        rows = [r for r in records if r.get("section") == "accuracy" and r["case"] == case]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (impl, order), (colour, marker) in STYLE.items():
            pts = [(r["sparsity"], max(number(r["rel_l1"]), 1e-7)) for r in rows
                   if r["impl"] == impl and r["order"] == order]
            if not pts:
                continue
            name = f"{impl.replace('baseline-', '')} ({ORDER_NAMES[order]})"
            ax.scatter(*zip(*pts), s=14, color=colour, marker=marker, alpha=0.45)
            front = [pts[i] for i in pareto_front(pts)]
            ax.plot(*zip(*front), color=colour, lw=1.5, label=name)
        for bound in BOUNDS:
            ax.axhline(bound, color="red", lw=0.6, ls=":")
        ax.set_yscale("log")
        ax.set_xlim(-0.02, 1.0)
        ax.set_xlabel("tile sparsity")
        ax.set_ylabel("relative L1 vs full attention")
        ax.set_title(_title(case, rows[0]))
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
        name = f"accuracy_{case}.png"
        _save(plt, fig, out_dir, name)
        written.append(name)
    return written


def speed(records, out_dir) -> list:
    plt = _pyplot()
    if plt is None:
        return []
    written = []
    for case in cases(records, "speed"):
        rows = [r for r in records if r.get("section") == "speed" and r["case"] == case]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for impl, colour, marker in (("sparge-exact", "tab:blue", "o"),
                                     ("sparge-stage2", "tab:green", "^"),
                                     ("flex", "tab:red", "s")):
            pts = sorted((r["sparsity"], r["tops"]) for r in rows if r["impl"] == impl)
            if pts:
                ax.plot(*zip(*pts), color=colour, marker=marker, label=impl)
        for impl, colour in (("sdpa-cudnn", "black"), ("sdpa-flash", "gray")):
            for r in rows:
                if r["impl"] == impl:
                    ax.axhline(r["tops"], color=colour, ls="--", lw=1, label=f"{impl} (dense)")
        ax.set_xlabel("tile sparsity")
        ax.set_ylabel("dense-equivalent TOPS")
        ax.set_title(_title(case, rows[0]))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        name = f"speed_{case}.png"
        _save(plt, fig, out_dir, name)
        written.append(name)
    return written


def real_models(records, out_dir) -> list:
    plt = _pyplot()
    if plt is None:
        return []
    written = []
    for case in cases(records, "real-e2e"):
        rows = [r for r in records if r.get("section") == "real-e2e" and r["case"] == case
                and r["impl"] == "sparge-exact" and r.get("value") is not None]
        if not rows:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        families = sorted({r["family"] for r in rows})
        for family in families:
            mine = [r for r in rows if r["family"] == family]
            axes[0].scatter([r["layers_sparsity"] for r in mine],
                            [number(r["value"]) for r in mine], label=family)
            axes[1].scatter([r["layers_sparsity"] for r in mine],
                            [max(number(r["layers_rel_l1"]), 1e-7) for r in mine], label=family)
        axes[0].set_xlabel("tile sparsity of the captured layers")
        axes[0].set_ylabel(rows[0]["metric"])
        axes[0].set_title(f"{case}: whole model vs unpatched")
        axes[1].set_yscale("log")
        axes[1].set_xlabel("tile sparsity of the captured layers")
        axes[1].set_ylabel("pooled relative L1 of the layers")
        axes[1].set_title(f"{case}: captured layers")
        for bound in BOUNDS:
            axes[1].axhline(bound, color="red", lw=0.6, ls=":")
        axes[0].legend(fontsize=7)
        for ax in axes:
            ax.grid(alpha=0.3)
        name = f"real_{case}.png"
        _save(plt, fig, out_dir, name)
        written.append(name)
    return written


def _selection_series(records, section):
    """{(case, order): [records]} of a selection-mode section, in run order."""
    series = {}
    for r in records:
        if r.get("section") == section and r["impl"] == "sparge-exact":
            series.setdefault((r["case"], r["order"]), []).append(r)
    return series


def calibration(records, out_dir) -> list:
    """Requested τ against the true mass the kept tiles hold: one line per estimator and
    workload (colour: workload and order; line style: estimator), and the diagonal."""
    plt = _pyplot()
    series = _selection_series(records, "calibration")
    if plt is None or not series:
        return []
    fig, ax = plt.subplots(figsize=(6.5, 5))
    colours = plt.get_cmap("tab10")
    styles = {"sampled_rows": ("-", "o"), "pooled": (":", "x")}
    taus = sorted({r["cdf_threshold"] for rows in series.values() for r in rows})
    for n, ((case, order), rows) in enumerate(series.items()):
        for estimate, (line, marker) in styles.items():
            pts = sorted((r["cdf_threshold"], r["kept_mass"]) for r in rows
                         if r["estimate"] == estimate)
            if pts:
                ax.plot(*zip(*pts), ls=line, marker=marker, ms=4, color=colours(n % 10),
                        label=f"{case} ({ORDER_NAMES[order]}), {estimate}")
    lo = min(taus) - 0.02
    ax.plot([lo, 1], [lo, 1], color="black", lw=0.8, label="kept = τ")
    ax.set_xlabel("requested τ (TopCdf cdf_threshold)")
    ax.set_ylabel("true attention mass kept (mean over query blocks and heads)")
    ax.set_title("Calibration: sampled_rows (solid) against pooled (dotted)")
    ax.legend(fontsize=6, loc="lower right")
    ax.grid(alpha=0.3)
    name = "calibration.png"
    _save(plt, fig, out_dir, name)
    return [name]


def error_target(records, out_dir) -> list:
    """Requested ε against every head's measured relative L1 (one colour per workload and
    order, spread a little along x so the heads stay visible), and the diagonal."""
    plt = _pyplot()
    series = _selection_series(records, "error-target")
    if plt is None or not series:
        return []
    fig, ax = plt.subplots(figsize=(6.5, 5))
    colours = plt.get_cmap("tab10")
    targets = sorted({r["target_error"] for rows in series.values() for r in rows})
    # Heads that keep every tile (random inputs) measure ~1e-7: drawn at the floor instead of
    # stretching the axis over five decades.
    floor = targets[0] / 10
    count = len(series)
    for n, ((case, order), rows) in enumerate(series.items()):
        shift = 1.0 + 0.25 * (n - (count - 1) / 2) / max(1, count)
        xs, ys = [], []
        for r in rows:
            errs = [max(number(e), floor) for e in r["head_rel_l1"]]
            xs += [r["target_error"] * shift] * len(errs)
            ys += errs
        ax.scatter(xs, ys, s=16, alpha=0.7, color=colours(n % 10),
                   label=f"{case} ({ORDER_NAMES[order]})")
    span = [targets[0] / 1.5, targets[-1] * 1.5]
    ax.plot(span, span, color="black", lw=0.8, label="measured = ε")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(floor / 1.3, targets[-1] * 2)
    ax.set_xticks(targets)
    ax.set_xticklabels([f"{t:g}" for t in targets])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("requested target_error ε (workloads spread apart along x)")
    ax.set_ylabel(f"measured relative L1 of each head's output (≤ {floor:g} drawn at it)")
    ax.set_title("Error target: one point per (workload, head)")
    ax.legend(fontsize=6, loc="upper left")
    ax.grid(alpha=0.3)
    name = "error_target.png"
    _save(plt, fig, out_dir, name)
    return [name]


def masks(case_name, pairs, out_dir) -> list:
    """pairs: [(head, dense mask in token order [nq, nk], dense mask in Hilbert order)]."""
    plt = _pyplot()
    if plt is None or not pairs:
        return []
    fig, axes = plt.subplots(2, len(pairs), figsize=(3.2 * len(pairs), 3.6), squeeze=False)
    for col, (head, original, hilbert) in enumerate(pairs):
        for row, (mask, order) in enumerate(((original, "row-major"), (hilbert, "Hilbert"))):
            ax = axes[row][col]
            ax.imshow(mask.cpu().numpy(), cmap="Greys", vmin=0, vmax=1,
                      interpolation="nearest", aspect="auto")
            ax.set_title(f"head {head}, {order}: kept {float(mask.float().mean()):.2f}",
                         fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("query blocks")
    axes[1][0].set_ylabel("query blocks")
    fig.suptitle(f"{case_name}: tile masks Stage 1 predicts with the default thresholds (sim 0.6, "
                 "TopCdf 0.98); black = computed, key blocks across", fontsize=9)
    name = f"masks_{case_name}.png"
    _save(plt, fig, out_dir, name)
    return [name]
