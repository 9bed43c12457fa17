"""The report's PNG plots, drawn from the records alone (so --md-from can redraw them):
accuracy vs sparsity with the Pareto fronts, speed vs sparsity, the real models' end-to-end
metric vs sparsity; and the predicted-mask pictures, drawn during the run from live masks.
Every function returns the file names it wrote ([] without matplotlib)."""
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
        fig.savefig(Path(out_dir) / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
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
        fig.savefig(Path(out_dir) / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
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
        fig.savefig(Path(out_dir) / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(name)
    return written


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
    fig.savefig(Path(out_dir) / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [name]
