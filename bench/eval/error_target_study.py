#!/usr/bin/env python3
"""The error target against the best fixed top-k, and its calibration (issue 11 items 2 and 5).
A CPU study.

For each workload (sparge.workloads: the video grid in natural and Hilbert order, language-like
causal heads, random) and target ε (0.02, 0.05):
  - error-target mode (`sparge.attention(target_error=ε)`): tile sparsity, measured relative L1
    against float64 dense attention (whole tensor and per head), and per head the estimate and
    whether the measured error is ≤ ε (the calibration: ≥ 95% of (workload, head) pairs);
  - fixed top-k: one κ for every head and query block, swept, from either estimate: the pooled
    map (SpargeAttn's) and the sampled rows (16 per block, as the error target reads); the best
    fixed top-k for ε is the sparsest (estimate, κ) whose whole-tensor rel L1 is ≤ ε (what a
    user tuning κ once per workload, with hindsight, gets).
  - the sweep also gives the sparsity of fixed top-k at rel L1 ≤ 0.02 / 0.05 / 0.1.
Both modes run with sim_threshold=-1 (every block similar) so that the selection alone decides.

    python3 bench/eval/error_target_study.py --out bench/results/<date>_<cpu>_error-target-study.jsonl
    python3 bench/eval/error_target_study.py --md-from <that file>     # the table
"""
import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

import sparge
from sparge import workloads
from sparge.measure import rel_l1

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration import head_rel_l1  # noqa: E402
from records import commit_id, cpu_model  # noqa: E402

TARGETS = (0.02, 0.05)
KAPPAS = (0.03, 0.05, 0.07, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
          1.0)
LEVELS = (0.02, 0.05, 0.1)
ESTIMATES = ("pooled", "sampled_rows")


def make_workloads(tokens, heads, dim):
    side = round((tokens // 16) ** 0.5)  # a (16, side, side) grid of about `tokens` tokens
    video = workloads.video_grid(heads=heads, grid=(16, side, side), head_dim=dim, seed=3)
    return [("video", video, None),
            ("video-hilbert", video, video.grid),
            ("llm-like", workloads.language_like(heads_q=heads, heads_kv=heads // 2,
                                                 tokens=tokens, head_dim=dim, seed=5), None),
            ("random", workloads.random_gaussian(heads_q=heads, seq_q=tokens, head_dim=dim,
                                                 seed=6), None)]


def reference(w):
    group = w.q.shape[1] // w.k.shape[1]
    k, v = (t.double().repeat_interleave(group, 1) for t in (w.k, w.v))
    return torch.nn.functional.scaled_dot_product_attention(w.q.double(), k, v,
                                                            is_causal=w.causal)


def run(w, grid, **opts):
    return sparge.attention(w.q, w.k, w.v, is_causal=w.causal, token_grid=grid,
                            sim_threshold=-1.0, return_stats=True, **opts)


def study(args):
    base = dict(date=datetime.date.today().isoformat(), device=cpu_model(), commit=commit_id(),
                dtype="float32", head_dim=args.dim, batch=1, ms=None, tops=None,
                sim_threshold=-1.0)
    for name, w, grid in make_workloads(args.tokens, args.heads, args.dim):
        ref = reference(w)
        shape = dict(workload=name, heads_q=w.q.shape[1], heads_kv=w.k.shape[1],
                     seq_q=w.q.shape[2], seq_k=w.k.shape[2], causal=w.causal)
        for estimate in ESTIMATES:
            for kappa in KAPPAS:
                out, stats = run(w, grid, topk=kappa, estimate=estimate, sample_rows=16)
                yield dict(base, **shape, impl="sparge-cpu-topk", topk=kappa, estimate=estimate,
                           sparsity=stats.sparsity, rel_l1=rel_l1(out, ref), cos_sim=None,
                           head_rel_l1=head_rel_l1(out, ref))
        for target in TARGETS:
            out, stats = run(w, grid, target_error=target)
            yield dict(base, **shape, impl="sparge-cpu-target", target_error=target,
                       sparsity=stats.sparsity, rel_l1=rel_l1(out, ref), cos_sim=None,
                       head_rel_l1=head_rel_l1(out, ref),
                       head_tau=stats.select_value.flatten().tolist(),
                       head_estimate=stats.error_estimate.flatten().tolist())


def table(records):
    by_workload = {}
    for r in records:
        by_workload.setdefault(r["workload"], []).append(r)
    lines = ["| workload | ε | error target: sparsity / rel L1 / heads ≤ ε | best fixed top-k: "
             "κ / sparsity / rel L1 | gap |",
             "|---|---|---|---|---|"]
    pairs = within = 0
    for name, rs in by_workload.items():
        topk = sorted((r for r in rs if r["impl"] == "sparge-cpu-topk"), key=lambda r: r["topk"])
        for r in (r for r in rs if r["impl"] == "sparge-cpu-target"):
            eps = r["target_error"]
            ok = [e <= eps for e in r["head_rel_l1"]]
            pairs, within = pairs + len(ok), within + sum(ok)
            meets = [t for t in topk if t["rel_l1"] <= eps]
            best = max(meets, key=lambda t: t["sparsity"]) if meets else None
            best_text = (f"{best['topk']} ({best.get('estimate', 'pooled')}) / "
                         f"{best['sparsity']:.3f} / {best['rel_l1']:.4f}"
                         if best else "none meets ε")
            gap = f"{r['sparsity'] - best['sparsity']:+.3f}" if best else "n/a"
            lines.append(f"| {name} | {eps} | {r['sparsity']:.3f} / {r['rel_l1']:.4f} / "
                         f"{sum(ok)} of {len(ok)} | {best_text} | {gap} |")
    lines += ["", f"(workload, head) pairs within ε: {within} of {pairs}", "",
              "| workload | fixed top-k sparsity at rel L1 ≤ " +
              " / ".join(str(x) for x in LEVELS) + ": pooled | the same: sampled rows |",
              "|---|---|---|"]
    for name, rs in by_workload.items():
        cells = []
        for estimate in ESTIMATES:
            topk = [r for r in rs if r["impl"] == "sparge-cpu-topk"
                    and r.get("estimate", "pooled") == estimate]
            per_level = []
            for level in LEVELS:
                meets = [t["sparsity"] for t in topk if t["rel_l1"] <= level]
                per_level.append(f"{max(meets):.3f}" if meets else "-")
            cells.append(" / ".join(per_level))
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--out", help="JSON Lines file to append the records to")
    p.add_argument("--md-from", help="print the table of an existing records file and stop")
    args = p.parse_args()
    if args.md_from:
        records = [json.loads(line) for line in Path(args.md_from).read_text().splitlines()
                   if line.strip()]
        print(table(records))
        return
    records = []
    with torch.inference_mode():
        for r in study(args):
            records.append(r)
            print(r["workload"], r["impl"], r.get("topk", r.get("target_error")),
                  f"sparsity {r['sparsity']:.3f} rel_l1 {r['rel_l1']:.4f}", flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
    print(table(records))


if __name__ == "__main__":
    main()
