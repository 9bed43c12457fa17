"""Issue 11 item 3 on the GPU: the library's default settings against candidate defaults, whole
sparge.attention calls beside dense SDPA in the same process, on the workloads the defaults must
serve: video-like tokens in natural order and with token_grid (Hilbert order), language-like
causal heads and random inputs (nothing to skip: a default must not make them slower than dense).

Per (workload, N, setting): block sparsity, relative L1 against fp32 attention, the call's time
(everything: gathers, Stage 1, Stage 2) and dense SDPA's (the default backend choice: cuDNN or
flash) on the same tensors, and the tiles the similarity gate forced (stats.forced_fraction).
Settings: "today" passes nothing (the library's defaults), the others their options.
bf16, B 1, H --heads, hd --head-dim; the video grid is (N/1024, 32, 32). CUDA events
(sparge.measure.time_ms), median after warm-up. --rounds R > 1 times SDPA and every setting R
times in turn, the settings' order reversed every other round, and keeps the median of the
rounds' medians (so that clock drift over a long run falls on every setting alike; each round's
medians are in the record). --device cpu: a smoke run on small shapes.

    python3 bench/gpu/bench_defaults.py --commit $(git rev-parse --short HEAD) --out-dir .
"""
import argparse
import datetime
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import sparge
from jsonl_out import emit, record_path
from sparge import workloads
from sparge.measure import dense_tops, time_ms

SETTINGS = {
    "today": {},
    "pooled-sim0.3": dict(sim_threshold=0.3),
    "rows4-cdf0.98-sim0.3": dict(estimate="sampled_rows", sample_rows=4, cdf_threshold=0.98,
                                 sim_threshold=0.3),
    "rows8-cdf0.98-sim0.3": dict(estimate="sampled_rows", sample_rows=8, cdf_threshold=0.98,
                                 sim_threshold=0.3),
    # The gate at 0.1: at head dim 128 it forces every block of random inputs and none of the
    # video grid's in natural order (bench/eval/gate_sweep.py).
    "pooled-sim0.1": dict(sim_threshold=0.1),
    "rows4-cdf0.98-sim0.1": dict(estimate="sampled_rows", sample_rows=4, cdf_threshold=0.98,
                                 sim_threshold=0.1),
    "rows8-cdf0.98-sim0.1": dict(estimate="sampled_rows", sample_rows=8, cdf_threshold=0.98,
                                 sim_threshold=0.1),
    # The proposal as a user passes it (docs/method.md, "The defaults").
    "auto-sim0.1": dict(estimate="auto", cdf_threshold=0.98, sim_threshold=0.1),
}
DEFAULT_SETTINGS = "today,pooled-sim0.3,rows4-cdf0.98-sim0.3,rows8-cdf0.98-sim0.3"


def reference(q, k, v, causal):
    """fp32 attention, a few heads at a time (memory-efficient SDPA on the GPU)."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION if q.is_cuda else SDPBackend.MATH):
        for h in range(0, q.shape[1], 4):
            out[:, h:h + 4] = F.scaled_dot_product_attention(
                q[:, h:h + 4].float(), k[:, h:h + 4].float(), v[:, h:h + 4].float(), is_causal=causal)
    return out


def make(name, n, heads, head_dim):
    """(q, k, v, causal, token_grid) of a workload at n tokens."""
    if name.startswith("video"):
        grid = (max(1, n // 1024), 32, 32) if n >= 1024 else (1, n // 32, 32)
        w = workloads.video_grid(batch=1, heads=heads, grid=grid, head_dim=head_dim, seed=0)
        return w.q, w.k, w.v, False, (grid if name == "video-hilbert" else None)
    if name == "llm":
        w = workloads.language_like(batch=1, heads_q=heads, tokens=n, head_dim=head_dim, seed=0)
        return w.q, w.k, w.v, True, None
    w = workloads.random_gaussian(batch=1, heads_q=heads, seq_q=n, head_dim=head_dim, seed=0)
    return w.q, w.k, w.v, False, None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--seqs", default="4096,8192,32768")
    ap.add_argument("--workloads", default="video,video-hilbert,llm,random")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"of {', '.join(SETTINGS)}")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds (see above)")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    date = datetime.date.today().isoformat()
    timing = dict(warmup=2, reps=args.reps, device=args.device)
    records, table = [], []
    for n in (int(x) for x in args.seqs.split(",")):
        for name in args.workloads.split(","):
            q, k, v, causal, grid = make(name, n, args.heads, args.head_dim)
            dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
            q, k, v = (t.to(args.device, dtype).contiguous() for t in (q, k, v))
            shape = dict(batch=1, heads_q=q.shape[1], heads_kv=k.shape[1], seq_q=n, seq_k=n,
                         head_dim=q.shape[3])
            ref = reference(q, k, v, causal)
            labels = args.settings.split(",")
            calls = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)}
            for label in labels:
                opts = dict(SETTINGS[label], is_causal=causal)
                if grid is not None:
                    opts["token_grid"] = grid
                calls[label] = (lambda o: lambda: sparge.attention(q, k, v, **o))(opts)
            rounds = {call: [] for call in calls}
            for r in range(args.rounds):
                for call in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
                    rounds[call].append(time_ms(calls[call], **timing))
            sdpa_ms = statistics.median(rounds["sdpa"])
            base = dict(date=date, device=dev_name, commit=args.commit, workload=name,
                        dtype=str(dtype).replace("torch.", "").replace("bfloat16", "bf16"),
                        causal=causal, cos_sim=None, **shape)
            records.append(dict(base, impl="sdpa", ms=sdpa_ms, tops=dense_tops(shape, causal, sdpa_ms),
                                sparsity=0.0, rel_l1=None, round_ms=rounds["sdpa"]))
            for label in labels:
                opts = dict(SETTINGS[label], is_causal=causal)
                if grid is not None:
                    opts["token_grid"] = grid
                out, stats = sparge.attention(q, k, v, return_stats=True, **opts)
                err = float((out.float() - ref).abs().sum() / ref.abs().sum())
                forced = stats.forced_fraction
                forced = float(forced.mean()) if forced is not None else float("nan")
                call_ms = statistics.median(rounds[label])
                records.append(dict(base, impl="sparge-exact", setting=label, options=SETTINGS[label],
                                    ms=call_ms, tops=dense_tops(shape, causal, call_ms),
                                    sparsity=stats.sparsity, rel_l1=err,
                                    forced_fraction=forced, sdpa_ms=sdpa_ms,
                                    speedup_vs_sdpa=sdpa_ms / call_ms, reps=args.reps,
                                    rounds=args.rounds, round_ms=rounds[label]))
                table.append(f"| {name} | {n} | {label} | {stats.sparsity:.3f} | {err:.4f} | "
                             f"{forced:.2f} | {call_ms:.3f} | {sdpa_ms:.3f} | "
                             f"{sdpa_ms / call_ms:.2f} |")
            del q, k, v, ref
    emit(records, record_path(args.out_dir, dev_name, f"defaults-{args.commit}") if args.out_dir else None)
    print("| workload | N | setting | sparsity | rel L1 | forced | call ms | SDPA ms | x SDPA |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
