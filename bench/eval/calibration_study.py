#!/usr/bin/env python3
"""How well does Stage 1's compressed map estimate the real attention mass of each key block, and
what would estimate it better? A CPU study for issue 11 (masks that need no tuning).

For each workload (sparge.workloads; both token orders for the video grid), each head and each
128-row query block i, the true mass of key block j is m_ij = mean over the rows r of block i of
sum over the keys of block j of softmax(q_r·K·scale). Estimators of m_i· (each normalized to sum
1 per row):
  pooled     the paper's map: row-softmax of mean(q_i)·mean(k_j)·scale (docs/method.md, Stage 1);
  pooled+var the same logits plus a log-normal correction for the spread of the scores inside a
             tile: + 0.5·scale²·(q̄ᵀ Σk_j q̄ + k̄ᵀ Σq_i k̄), Σ the covariance of the block's keys
             (queries), so that a tile whose keys vary gets the weight its exp-sum really has;
  rows-s     exact softmax of s query rows per block (evenly spaced), their block masses averaged:
             s/128 of the dense score work;
  sparge-rows-s  the library's Stage 1 mode estimate="sampled_rows" (sample_rows=s, every block
             similar): the mask sparge.predict_block_mask keeps, not this file's top_p;
  exact      the true masses themselves: what any estimator's top-p selection at this block
             granularity keeps at best (keeping whole blocks until τ is reached overshoots τ
             by the last block's share, however good the estimate).
Each estimate drives a top-p selection (keep the fewest key blocks whose estimated mass reaches
τ); reported per (workload, estimator, τ): the true mass the kept blocks hold (ideal: τ), the
sparsity, and the relative L1 error of the block-sparse output against dense attention.

    python3 bench/eval/calibration_study.py --out bench/results/<date>_<cpu>_calibration-study.jsonl
    python3 bench/eval/calibration_study.py --md-from <that file>    # the table
"""
import argparse
import datetime
import json
import math
import platform

import torch

import sparge
from sparge import workloads

from calibration import block_mass

BQ, BK = 128, 64


def hilbert(w):
    """q, k, v of a grid workload in Hilbert order (sparge's own order)."""
    order = torch.ops.sparge.hilbert_order(*w.grid, "cpu")
    return (t.index_select(2, order) for t in (w.q, w.k, w.v))


def block_view(x, size):
    n = x.shape[0]
    nb = math.ceil(n / size)
    pad = nb * size - n
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    return x.view(nb, size, -1), nb


def allowed(nq, nk, n, causal):
    if not causal:
        return torch.ones(nq, nk, dtype=torch.bool)
    i = torch.arange(nq)[:, None]
    j = torch.arange(nk)[None, :]
    return j * BK <= torch.clamp((i + 1) * BQ, max=n) - 1


def pooled_logits(q, k, scale, variance):
    qb, nq = block_view(q, BQ)
    kb, nk = block_view(k, BK)
    n = q.shape[0]
    # Mean over the valid rows only (a partial last block).
    q_count = torch.full((nq, 1), float(BQ))
    q_count[-1] = n - (nq - 1) * BQ
    k_count = torch.full((nk, 1), float(BK))
    k_count[-1] = k.shape[0] - (nk - 1) * BK
    qm = qb.sum(1) / q_count
    km = kb.sum(1) / k_count
    logits = qm @ km.T * scale
    if variance:
        # Covariances with the padded rows excluded (they are 0: subtract their mean's share).
        kc = kb - km[:, None, :]
        kc[-1, int(k_count[-1]):] = 0
        qc = qb - qm[:, None, :]
        qc[-1, int(q_count[-1]):] = 0
        cov_k = torch.einsum("jrd,jre->jde", kc, kc) / k_count[:, :, None]
        cov_q = torch.einsum("irp,irq->ipq", qc, qc) / q_count[:, :, None]
        spread_k = torch.einsum("id,jde,ie->ij", qm, cov_k, qm)
        spread_q = torch.einsum("jp,ipq,jq->ij", km, cov_q, km)
        logits = logits + 0.5 * scale * scale * (spread_k + spread_q)
    return logits, nq, nk


def row_sample_mass(q, k, scale, rows_per_block, causal_ok_rows, nq, nk):
    """[nq, nk] mass estimated from `rows_per_block` exact query rows per block."""
    n = q.shape[0]
    est = torch.zeros(nq, nk)
    for i in range(nq):
        r0, r1 = i * BQ, min(n, (i + 1) * BQ)
        picks = torch.linspace(r0, r1 - 1, rows_per_block).round().long().unique()
        s = q[picks] @ k.T * scale
        if causal_ok_rows is not None:
            s = s.masked_fill(causal_ok_rows[picks], -math.inf)
        p = torch.softmax(s, dim=-1)
        p = torch.nn.functional.pad(p, (0, nk * BK - k.shape[0]))
        est[i] = p.view(len(picks), nk, BK).sum(-1).mean(0)
    return est


def top_p(est, tau, allowed_mask):
    """Keep, per row, the fewest allowed blocks whose estimated mass reaches tau."""
    est = est.masked_fill(~allowed_mask, 0.0)
    est = est / est.sum(-1, keepdim=True).clamp_min(1e-30)
    vals, idx = est.sort(dim=-1, descending=True)
    before = vals.cumsum(-1) - vals  # mass of the blocks ranked above
    keep_sorted = (before < tau) & (vals > 0)
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted)
    keep.scatter_(1, idx, keep_sorted)
    return keep & allowed_mask


def sparse_output(s_full, v, keep, causal_mask):
    n_q, n_k = s_full.shape
    elem = keep.repeat_interleave(BQ, 0)[:n_q].repeat_interleave(BK, 1)[:, :n_k]
    s = s_full.masked_fill(~elem, -math.inf)
    if causal_mask is not None:
        s = s.masked_fill(causal_mask, -math.inf)
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)
    return p @ v


def study(name, q, k, v, causal, taus, rows_list):
    """Records for one workload (all heads pooled)."""
    heads, n, d = q.shape[1], q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(d)
    nq, nk = math.ceil(n / BQ), math.ceil(n / BK)
    ok = allowed(nq, nk, n, causal)
    causal_mask = torch.ones(n, n, dtype=torch.bool).triu(1) if causal else None
    group = q.shape[1] // k.shape[1]
    acc = {}
    for h in range(heads):
        qh, kh, vh = q[0, h].float(), k[0, h // group].float(), v[0, h // group].float()
        s_full = qh @ kh.T * scale
        m_true = block_mass(q[:, h:h + 1], k[:, h // group:h // group + 1], causal=causal,
                            precision=torch.float32)[0, 0]
        dense = sparse_output(s_full, vh, ok, causal_mask)
        estimates = {}
        for variance in (False, True):
            logits, _, _ = pooled_logits(qh, kh, scale, variance)
            estimates["pooled+var" if variance else "pooled"] = torch.softmax(
                logits.masked_fill(~ok, -math.inf), dim=-1)
        for rows in rows_list:
            estimates[f"rows-{rows}"] = row_sample_mass(qh, kh, scale, rows, causal_mask, nq, nk)
        for rows in rows_list:
            estimates[f"sparge-rows-{rows}"] = None  # the library's mask, per τ below
        estimates["exact"] = m_true.masked_fill(~ok, 0.0)
        for est_name, est in estimates.items():
            for tau in taus:
                if est is None:
                    mask = sparge.predict_block_mask(
                        q[:, h:h + 1], k[:, h // group:h // group + 1], is_causal=causal,
                        sim_threshold=-1.0, cdf_threshold=tau, estimate="sampled_rows",
                        sample_rows=int(est_name.rsplit("-", 1)[1]), backend="cpu")
                    keep = mask.to_dense()[0, 0]
                else:
                    keep = top_p(est, tau, ok)
                kept_mass = (m_true * keep).sum(-1)  # [nq]
                out = sparse_output(s_full, vh, keep, causal_mask)
                err = float((out - dense).abs().sum() / dense.abs().sum())
                a = acc.setdefault((est_name, tau), dict(mass=[], kept=0, total=0, l1_num=0.0, l1_den=0.0))
                a["mass"].append(kept_mass)
                a["kept"] += int(keep.sum())
                a["total"] += int(ok.sum())
                a["l1_num"] += float((out - dense).abs().sum())
                a["l1_den"] += float(dense.abs().sum())
    recs = []
    for (est_name, tau), a in acc.items():
        mass = torch.cat(a["mass"])
        recs.append(dict(workload=name, estimator=est_name, tau=tau, kept_mass_mean=float(mass.mean()),
                         kept_mass_p10=float(mass.quantile(0.1)), sparsity=1 - a["kept"] / a["total"],
                         rel_l1=a["l1_num"] / a["l1_den"], cos_sim=None, ms=None, tops=None,
                         heads_q=heads, heads_kv=k.shape[1], seq_q=n, seq_k=n, head_dim=d, causal=causal))
    return recs


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(recs):
    """Per workload, one row per estimator: true kept mass / sparsity / rel_l1 at each τ."""
    taus = sorted({r["tau"] for r in recs})
    lines = [f"{recs[0]['device']}, commit {recs[0]['commit']}, {recs[0]['date']}: fp32, top-p selection "
             "of 128×64 tiles by each estimate; cells: true mass kept (mean) / sparsity / rel_l1.", "",
             "| workload | estimator | " + " | ".join(f"τ = {t:g}" for t in taus) + " |",
             "|---|---|" + "---|" * len(taus)]
    for wl in dict.fromkeys(r["workload"] for r in recs):
        for est in dict.fromkeys(r["estimator"] for r in recs if r["workload"] == wl):
            cells = []
            for t in taus:
                r = next(r for r in recs if r["workload"] == wl and r["estimator"] == est and r["tau"] == t)
                cells.append(f"{r['kept_mass_mean']:.3f} / {r['sparsity']:.2f} / {r['rel_l1']:.3f}")
            lines.append(f"| {wl} | {est} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="JSON Lines records to write")
    ap.add_argument("--md-from", help="only print the Markdown table of an existing .jsonl file")
    ap.add_argument("--taus", default="0.9,0.95,0.98,0.99")
    ap.add_argument("--rows", default="1,4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--cases", default="",
                    help="comma-separated case names to run (default all): video-grid natural, "
                         "video-grid hilbert, llm-like causal, random")
    args = ap.parse_args()
    if args.md_from:
        with open(args.md_from) as f:
            print(markdown([json.loads(line) for line in f if line.strip()]), end="")
        return
    if not args.out:
        ap.error("--out is required (or --md-from)")
    torch.set_num_threads(args.threads)
    taus = [float(t) for t in args.taus.split(",")]
    rows_list = [int(r) for r in args.rows.split(",")]
    cases = []
    w = workloads.video_grid(heads=4, grid=(8, 24, 32), head_dim=64, seed=1)  # 6144 tokens
    cases.append(("video-grid natural", w.q, w.k, w.v, False))
    cases.append(("video-grid hilbert", *hilbert(w), False))
    w = workloads.language_like(heads_q=4, heads_kv=2, tokens=6144, head_dim=64, seed=1)
    cases.append(("llm-like causal", w.q, w.k, w.v, True))
    w = workloads.random_gaussian(heads_q=2, seq_q=4096, head_dim=64, seed=1)
    cases.append(("random", w.q, w.k, w.v, False))
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",")]
        unknown = [c for c in wanted if c not in [case[0] for case in cases]]
        if unknown:
            ap.error(f"unknown case(s) {unknown}")
        cases = [case for case in cases if case[0] in wanted]
    base = dict(date=datetime.date.today().isoformat(), device=cpu_name(), commit=args.commit,
                impl="study", dtype="fp32", batch=1)
    with open(args.out, "w") as f:
        for name, q, k, v, causal in cases:
            for r in study(name, q, k, v, causal, taus, rows_list):
                r.update(base)
                f.write(json.dumps(r) + "\n")
                f.flush()
                print(f"{r['workload']:20s} {r['estimator']:10s} tau {r['tau']:.2f}: kept mass "
                      f"{r['kept_mass_mean']:.3f} (p10 {r['kept_mass_p10']:.3f}) sparsity "
                      f"{r['sparsity']:.3f} rel_l1 {r['rel_l1']:.4f}", flush=True)


if __name__ == "__main__":
    main()
