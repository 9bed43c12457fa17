#!/usr/bin/env python3
"""Can the error target measure its candidates on a subset of the query blocks? A CPU study
(issue 11: the GPU error target costs 2.0-2.3x the dense kernel at 32K tokens, H100,
bench/results/2026-12-05_NVIDIA-H100_stage1-sampled-rows_check.md; its two kernels run 16 exact
rows of *every* query block, and the walk of `error_target_rows` reads K/V once per block).

A re-implementation in torch (float64) of the error target of docs/method.md ("The error
target"), with two knobs the library does not have:
  - `stride` s: the candidates' errors E_g are summed over query blocks i with i % s == s // 2
    only (1: every block, the library's rule);
  - `rank_rows`: the sampled rows per block whose block masses rank the key blocks (16: the
    library's rule; 4: the default sampled_rows estimate, which a faster GPU path would use for
    every block while only the subset gets 16 exact rows for the error).
Everything else follows the library: 16 evaluation rows per block (detail::sampled_row), the 32
candidate masses, TopCdf prefixes over the ranked eligible blocks (ties to the lower index),
the margin 1.1, the scan from the densest candidate down. Every block is similar (the gate off,
as the study of bench/eval/error_target_study.py), no sink, λ = ∞. The mask then applies the
head's chosen τ to every query block; the measured error is the rel L1 of that head's block-
sparse output against its dense output, both in float64.

Check: with stride 1 and rank_rows 16 the chosen τ and sparsity should be the library's
(`sparge.attention(target_error=ε, sim_threshold=-1)` on the CPU); the script prints both.

    python3 bench/eval/error_target_subset_study.py --tokens 16384 --out <file>.jsonl
"""
import argparse
import datetime
import json
import math
import sys
from pathlib import Path

import torch

import sparge
from sparge import workloads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import commit_id, cpu_model  # noqa: E402

BLOCK_Q, BLOCK_K = 128, 64
DROPS = (0.5, 0.39, 0.3, 0.23, 0.18, 0.14, 0.11, 0.085, 0.066, 0.052, 0.04, 0.031, 0.024, 0.019,
         0.015, 0.011, 0.0088, 0.0068, 0.0053, 0.0041, 0.0032, 0.0025, 0.0019, 0.0015, 0.0012,
         0.00091, 0.00071, 0.00055, 0.00043, 0.00033, 0.00026, 0.0002)  # error_target.h
TAUS = tuple(1.0 - d for d in DROPS)
MARGIN = 1.1
EVAL_ROWS = 16


def evaluated(nq, stride):
    """The query blocks whose candidates' errors are summed: i % stride == stride // 2."""
    return [i for i in range(nq) if i % stride == stride // 2]


def sampled_rows(first, n, count):
    """detail::sampled_row for s in [0, count)."""
    if count == 1:
        return [first + n - 1]
    return [first + (2 * s * (n - 1) + (count - 1)) // (2 * (count - 1)) for s in range(count)]


class Head:
    """One query head (q [N, D], its kv head's k, v [N, D], float64): per query block the
    exact softmax of the union of its evaluation and ranking rows, the rankings and the
    candidates' keep counts."""

    def __init__(self, q, k, v, causal, rank_rows_options):
        self.q, self.k, self.v, self.causal = q, k, v, causal
        n_tok, d = q.shape
        self.scale = 1.0 / math.sqrt(d)
        self.nq, self.nk = math.ceil(n_tok / BLOCK_Q), math.ceil(k.shape[0] / BLOCK_K)
        self.blocks = []
        for i in range(self.nq):
            first = i * BLOCK_Q
            n = min(BLOCK_Q, n_tok - first)
            last_key = first + n - 1 if causal else k.shape[0] - 1
            allowed = last_key // BLOCK_K + 1  # key blocks 0 .. allowed - 1
            eval_rows = sampled_rows(first, n, min(EVAL_ROWS, n))
            keys = allowed * BLOCK_K
            s = (q[eval_rows] @ k[:keys].T) * self.scale
            rows = torch.tensor(eval_rows, dtype=torch.long)
            if causal:
                s = s.masked_fill(torch.arange(keys)[None, :] > rows[:, None], -math.inf)
            s = s[:, :min(keys, k.shape[0])]
            p = torch.softmax(s, dim=1)
            pad = allowed * BLOCK_K - p.shape[1]
            pb = torch.nn.functional.pad(p, (0, pad)).view(len(eval_rows), allowed, BLOCK_K)
            vb = torch.nn.functional.pad(v[:p.shape[1]], (0, 0, 0, pad)).view(allowed, BLOCK_K, d)
            mass = pb.sum(2)                                   # [rows, allowed]
            u = torch.einsum("rjc,jcd->rjd", pb, vb)           # per block P·V
            o = u.sum(1)                                       # exact outputs
            blk = dict(mass=mass, u=u, o=o, allowed=allowed, keep={})
            for rr in rank_rows_options:
                sel = [eval_rows.index(r) for r in sampled_rows(first, n, min(rr, n))
                       if r in eval_rows]
                if len(sel) != min(rr, n):  # ranking rows not among the 16: compute them
                    rrows = sampled_rows(first, n, min(rr, n))
                    s2 = (q[rrows] @ k[:keys].T) * self.scale
                    if causal:
                        s2 = s2.masked_fill(torch.arange(keys)[None, :] >
                                            torch.tensor(rrows)[:, None], -math.inf)
                    p2 = torch.softmax(s2[:, :p.shape[1]], dim=1)
                    w = torch.nn.functional.pad(p2, (0, pad)).view(len(rrows), allowed,
                                                                    BLOCK_K).sum(2).mean(0)
                else:
                    w = mass[sel].mean(0)
                order = sorted(range(allowed), key=lambda j: (-float(w[j]), j))
                prob = w[order] / w.sum()
                before = torch.cumsum(prob, 0) - prob
                keep = [int((before < tau).sum()) for tau in TAUS]
                blk["keep"][rr] = (order, keep)
            self.blocks.append(blk)

    def candidate_errors(self, rank_rows, stride):
        """Σ over the subset's rows of ‖o_g − o‖₁ per candidate, and Σ ‖o‖₁."""
        err = [0.0] * len(TAUS)
        norm = 0.0
        for i in evaluated(self.nq, stride):
            blk = self.blocks[i]
            order, keep = blk["keep"][rank_rows]
            u, mass, o = blk["u"][:, order], blk["mass"][:, order], blk["o"]
            cu, cm = torch.cumsum(u, 1), torch.cumsum(mass, 1)
            norm += float(o.abs().sum())
            for g, kg in enumerate(keep):
                if kg == 0:
                    og = torch.zeros_like(o)
                else:
                    m = cm[:, kg - 1:kg]
                    og = torch.where(m > 0, cu[:, kg - 1] / m.clamp_min(1e-300), torch.zeros_like(o))
                err[g] += float((og - o).abs().sum())
        return err, norm

    def choose(self, rank_rows, stride, target):
        err, norm = self.candidate_errors(rank_rows, stride)
        g = len(TAUS)
        while g > 0:
            e = 0.0 if norm == 0.0 else err[g - 1] / norm
            if not MARGIN * e <= target:
                break
            g -= 1
        return g, (err[g] / norm if g < len(TAUS) and norm > 0 else 0.0)

    def mask(self, rank_rows, g):
        """Kept key blocks per query block for candidate g (len(TAUS): every allowed one)."""
        kept = []
        for blk in self.blocks:
            order, keep = blk["keep"][rank_rows]
            kept.append(sorted(order[:keep[g]]) if g < len(TAUS) else list(range(blk["allowed"])))
        return kept

    def measured(self, kept):
        """rel L1 of the block-sparse output (every row) against the dense one, and sparsity."""
        n_tok = self.q.shape[0]
        num = den = 0.0
        tiles = allowed_tiles = 0
        for i, blk in enumerate(self.blocks):
            first, last = i * BLOCK_Q, min(n_tok, (i + 1) * BLOCK_Q)
            rows = torch.arange(first, last)
            keys = blk["allowed"] * BLOCK_K
            s = (self.q[first:last] @ self.k[:keys].T) * self.scale
            if self.causal:
                s = s.masked_fill(torch.arange(s.shape[1])[None, :] > rows[:, None], -math.inf)
            dense = torch.softmax(s, 1) @ self.v[:s.shape[1]]
            keep_keys = torch.zeros(s.shape[1], dtype=torch.bool)
            for j in kept[i]:
                keep_keys[j * BLOCK_K:(j + 1) * BLOCK_K] = True
            sp = s.masked_fill(~keep_keys[None, :], -math.inf)
            p = torch.softmax(sp, 1).nan_to_num(0.0)
            out = p @ self.v[:s.shape[1]]
            num += float((out - dense).abs().sum())
            den += float(dense.abs().sum())
            tiles += len(kept[i])
            allowed_tiles += blk["allowed"]
        return num / den, 1.0 - tiles / allowed_tiles


def make_workloads(tokens, heads, dim):
    side = round((tokens // 16) ** 0.5)
    video = workloads.video_grid(heads=heads, grid=(16, side, side), head_dim=dim, seed=3)
    order = torch.ops.sparge.hilbert_order(*video.grid, "cpu")
    hilbert = workloads.Workload("video-hilbert", video.q[:, :, order], video.k[:, :, order],
                                 video.v[:, :, order], False, None)
    llm = workloads.language_like(heads_q=heads, heads_kv=max(1, heads // 2), tokens=tokens,
                                  head_dim=dim, seed=5)
    return [("video", video, None), ("video-hilbert", hilbert, video.grid), ("llm-like", llm, None)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--strides", default="1,4,8,16")
    ap.add_argument("--rank-rows", default="16,4")
    ap.add_argument("--targets", default="0.02,0.05")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    strides = [int(x) for x in args.strides.split(",")]
    rank_rows = [int(x) for x in args.rank_rows.split(",")]
    targets = [float(x) for x in args.targets.split(",")]
    base = dict(date=datetime.date.today().isoformat(), device=cpu_model(), commit=commit_id(),
                dtype="float64", head_dim=args.dim, batch=1, ms=None, tops=None, cos_sim=None,
                impl="study-error-target-subset", sim_threshold=-1.0)
    with open(args.out, "w") as f:
        for name, w, grid in make_workloads(args.tokens, args.heads, args.dim):
            group = w.q.shape[1] // w.k.shape[1]
            # The library on the same inputs (its rule: stride 1, 16 rows), for the check.
            _, lib = sparge.attention(w.q, w.k, w.v, is_causal=w.causal, sim_threshold=-1.0,
                                      target_error=targets[0], return_stats=True)
            lib_tau = [round(float(t), 5) for t in lib.select_value.flatten()]
            heads = [Head(w.q[0, h].double(), w.k[0, h // group].double(), w.v[0, h // group].double(),
                          w.causal, rank_rows) for h in range(w.q.shape[1])]
            cache = {}
            for target in targets:
                for rr in rank_rows:
                    for stride in strides:
                        per_head = []
                        for h, head in enumerate(heads):
                            g, est = head.choose(rr, stride, target)
                            if (h, rr, g) not in cache:
                                cache[(h, rr, g)] = head.measured(head.mask(rr, g))
                            l1, sparsity = cache[(h, rr, g)]
                            per_head.append(dict(tau=1.0 if g == len(TAUS) else TAUS[g], estimate=est,
                                                 rel_l1=l1, sparsity=sparsity))
                        count = len(evaluated(heads[0].nq, stride))
                        rec = dict(base, workload=name, heads_q=w.q.shape[1], heads_kv=w.k.shape[1],
                                   seq_q=w.q.shape[2], seq_k=w.k.shape[2], causal=w.causal,
                                   target_error=target, rank_rows=rr, stride=stride,
                                   evaluated_blocks=count, query_blocks=heads[0].nq,
                                   sparsity=sum(x["sparsity"] for x in per_head) / len(per_head),
                                   rel_l1=max(x["rel_l1"] for x in per_head),
                                   head_tau=[x["tau"] for x in per_head],
                                   head_rel_l1=[x["rel_l1"] for x in per_head],
                                   head_estimate=[x["estimate"] for x in per_head],
                                   heads_within=sum(x["rel_l1"] <= target for x in per_head),
                                   library_tau_at_first_target=lib_tau)
                        f.write(json.dumps(rec) + "\n")
                        f.flush()
                        print(f"{name:14s} ε {target} rank {rr:2d} stride {stride:2d} "
                              f"({count} of {heads[0].nq} blocks): sparsity {rec['sparsity']:.3f} "
                              f"worst head {rec['rel_l1']:.4f} within {rec['heads_within']}/{len(per_head)} "
                              f"τ {[round(t, 4) for t in rec['head_tau']]}"
                              + (f" (library {lib_tau})" if (target, rr, stride) == (targets[0], 16, 1) else ""),
                              flush=True)


if __name__ == "__main__":
    main()
