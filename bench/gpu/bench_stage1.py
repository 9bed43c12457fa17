"""Stage 1 alone on the GPU, by estimate (pooled, sampled_rows, and the error target): bf16, B 1, H 32, hd 128,
causal, N in {8K, 32K}; the time beside the dense causal kernel's on the same inputs. The inputs are random,
so at the default similarity gate every query block is non-similar and the sampled_rows and error-target
estimates are skipped (their rows time the gated path), and so is the key side (its key mean and
pooling); --sim -1 makes every block similar, so that they all run (e.g. --sim -1 --estimates pooled:
the pooling kernels, the pooled map and the selection). bench_whole_call.py --error-target times the
error target with every block similar.

--error-target times the error target alone with every block estimated (sim_threshold -1, so the gate
forces nothing), not causal, target_error 0.02, bf16, B 1, H 32, hd 128 and 64, on two inputs: "random"
(nearly uniform attention: the densest candidate keeps almost every tile, so error_target_rows walks
them all, its worst case) and "smooth" (each token's q and k are a smooth function of its position
plus noise: local attention, blocks self-similar as in the video-like workload, short walks). Beside it
the sampled_rows estimate (TopCdf 0.98, --sample-rows rows per block, every block estimated), the dense
non-causal kernel on the same inputs and each mask's sparsity; --skip-target times those alone.

    python3 bench/gpu/bench_stage1.py --lib build-b/libsparge_c.so --commit $(git rev-parse --short HEAD)
    python3 bench/gpu/bench_stage1.py --lib build-b/libsparge_c.so --error-target --seqs 8192,32768
"""
import argparse
import datetime
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention import BLOCK_K, BLOCK_Q, Mask, Sparge, time_ms  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--seqs", default="8192,32768")
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--error-target", action="store_true", help="the error target with every block estimated")
    ap.add_argument("--head-dims", default="128,64", help="--error-target: head dims")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--skip-target", action="store_true",
                    help="--error-target: time the sampled_rows estimates alone (not the target)")
    ap.add_argument("--sim", type=float, default=None,
                    help="sim_threshold of the plain table (default: the library's; -1: every block "
                         "similar, so the key side and the estimates run)")
    ap.add_argument("--estimates", default="pooled,sampled_rows,target_error",
                    help="the plain table's estimates")
    ap.add_argument("--sample-rows", default="4",
                    help="--error-target: sampled_rows estimates to time beside it, rows per block "
                         "(4: the default; 16: what sparge.tune's plans run)")
    args = ap.parse_args()
    if args.error_target:
        error_target_sweep(args)
        return
    sp = Sparge(args.lib)
    dev = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    B, H, D = 1, 32, 128
    slug = "".join(ch if ch.isalnum() else "-" for ch in dev).strip("-")
    f = open(os.path.join(args.out_dir, f"{date}_{slug}_stage1-estimates.jsonl"), "w")
    stream = torch.cuda.current_stream().cuda_stream
    print("| N | estimate | Stage 1 ms | dense causal kernel ms | ratio |")
    print("|---|---|---|---|---|")
    for n in [int(x) for x in args.seqs.split(",")]:
        sets = [tuple(torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                for _ in range(2)]
        nq, nk = math.ceil(n / BLOCK_Q), math.ceil(n / BLOCK_K)
        pc = torch.empty(B * H * nq, device="cuda", dtype=torch.int32)
        pi = torch.empty(B * H * nq * nk, device="cuda", dtype=torch.int32)
        mask = Mask(pc.data_ptr(), pi.data_ptr(), 1, 0, B, H, n, n, BLOCK_Q, BLOCK_K)
        out = torch.empty_like(sets[0][0])
        dopts = sp.options(True, pv_threshold=float("inf"), sim_threshold=1.0)
        ws0 = torch.empty(sp.workspace_size(sets[0][0], sets[0][1], dopts), device="cuda", dtype=torch.uint8)
        sp.predict(sets[0][0], sets[0][1], dopts, mask, ws0, stream)  # sim 1: every allowed tile
        ms_dense = time_ms(lambda st: sp.attention(st[0], st[1], st[2], mask, dopts, out, stream), sets, 10)
        # The error target (target_error 0.02, SparseOptions) estimates with v too.
        for est in args.estimates.split(","):
            kw = dict(target_error=0.02) if est == "target_error" else \
                dict(estimate={"pooled": 0, "sampled_rows": 1}[est])
            if args.sim is not None:
                kw["sim_threshold"] = args.sim
            opts = sp.options(True, **kw)
            ws = torch.empty(sp.workspace_size(sets[0][0], sets[0][1], opts), device="cuda", dtype=torch.uint8)
            ms = time_ms(lambda st: sp.predict(st[0], st[1], opts, mask, ws, stream, v=st[2]), sets, 10)
            rec = dict(date=date, device=dev, commit=args.commit, workload="random", dtype="bf16",
                       head_dim=D, batch=B, heads_q=H, heads_kv=H, seq_q=n, seq_k=n, causal=True,
                       impl=f"sparge-stage1-{est}", ms=ms, tops=None, sparsity=None, rel_l1=None,
                       cos_sim=None, dense_causal_kernel_ms=ms_dense,
                       sim_threshold=args.sim)
            f.write(json.dumps(rec) + "\n")
            print(f"| {n} | {est} | {ms:.3f} | {ms_dense:.3f} | {ms / ms_dense:.3f} |", flush=True)
    f.close()


def smooth_inputs(B, H, n, D, gen):
    """q, k, v with local, block-self-similar attention: q and k = one smooth function of the
    token's position (random cosines per channel, periods ≥ 512 tokens) plus 10% noise, scaled so
    that a query's scores fall by ~12 (natural log units) over a few hundred tokens; v normal."""
    pos = torch.arange(n, device="cuda", dtype=torch.float32)[:, None]
    freq = torch.rand(H, 1, D, device="cuda", generator=gen) * (2 * math.pi / 512)
    phase = torch.rand(H, 1, D, device="cuda", generator=gen) * (2 * math.pi)
    base = torch.cos(pos[None] * freq + phase)[None].expand(B, H, n, D)

    def noisy():
        noise = torch.randn(B, H, n, D, device="cuda", generator=gen)
        # scale · q·k at distance 0 ≈ c² · D / 2 / √D = 12 for c² = 24 / √D: e^12 over the far keys
        return ((base + 0.1 * noise) * math.sqrt(24.0 / math.sqrt(D))).to(torch.bfloat16)

    return noisy(), noisy(), torch.randn(B, H, n, D, device="cuda", generator=gen).to(torch.bfloat16)


def error_target_sweep(args):
    sp = Sparge(args.lib)
    dev = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    B, H = 1, 32
    slug = "".join(ch if ch.isalnum() else "-" for ch in dev).strip("-")
    f = open(os.path.join(args.out_dir, f"{date}_{slug}_stage1-error-target.jsonl"), "w")
    stream = torch.cuda.current_stream().cuda_stream
    gen = torch.Generator(device="cuda")
    gen.manual_seed(0)
    print("| input, estimate | hd | N | Stage 1 ms | dense kernel ms | ratio | sparsity |")
    print("|---|---|---|---|---|---|---|")
    for D in [int(x) for x in args.head_dims.split(",")]:
        for n in [int(x) for x in args.seqs.split(",")]:
            nq, nk = math.ceil(n / BLOCK_Q), math.ceil(n / BLOCK_K)
            pc = torch.empty(B * H * nq, device="cuda", dtype=torch.int32)
            pi = torch.empty(B * H * nq * nk, device="cuda", dtype=torch.int32)
            mask = Mask(pc.data_ptr(), pi.data_ptr(), 1, 0, B, H, n, n, BLOCK_Q, BLOCK_K)
            for name in ("random", "smooth"):
                if name == "random":
                    sets = [tuple(torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16, generator=gen)
                                  for _ in range(3)) for _ in range(2)]
                else:
                    sets = [smooth_inputs(B, H, n, D, gen) for _ in range(2)]
                out = torch.empty_like(sets[0][0])
                dopts = sp.options(False, pv_threshold=float("inf"), sim_threshold=1.0)
                ws0 = torch.empty(sp.workspace_size(sets[0][0], sets[0][1], dopts), device="cuda", dtype=torch.uint8)
                sp.predict(sets[0][0], sets[0][1], dopts, mask, ws0, stream)  # sim 1: every tile
                try:  # a fast build (SPARGE_FAST_BUILD) has the d128 bf16 non-causal kernel only
                    ms_dense = time_ms(lambda st: sp.attention(st[0], st[1], st[2], mask, dopts, out, stream),
                                       sets, args.reps)
                except RuntimeError:
                    ms_dense = float("nan")
                rows = []
                if not args.skip_target:
                    opts = sp.options(False, target_error=0.02, sim_threshold=-1.0)
                    ws = torch.empty(sp.workspace_size(sets[0][0], sets[0][1], opts), device="cuda",
                                     dtype=torch.uint8)
                    ms = time_ms(lambda st: sp.predict(st[0], st[1], opts, mask, ws, stream, v=st[2]),
                                 sets, args.reps)
                    sp.predict(sets[0][0], sets[0][1], opts, mask, ws, stream, v=sets[0][2])
                    torch.cuda.synchronize()
                    rows.append(("target_error", ms, 1.0 - float(pc.sum()) / (B * H * nq * nk), ws.numel()))
                # The sampled_rows estimate (TopCdf 0.98) on the same inputs, every block
                # estimated: the cheaper calibrated estimate, for comparison.
                for nrows in [int(x) for x in args.sample_rows.split(",")]:
                    sopts = sp.options(False, estimate=1, sample_rows=nrows, select_value=0.98,
                                       sim_threshold=-1.0)
                    sws = torch.empty(sp.workspace_size(sets[0][0], sets[0][1], sopts), device="cuda",
                                      dtype=torch.uint8)
                    sms = time_ms(lambda st: sp.predict(st[0], st[1], sopts, mask, sws, stream), sets,
                                  args.reps)
                    sp.predict(sets[0][0], sets[0][1], sopts, mask, sws, stream)
                    torch.cuda.synchronize()
                    est = "sampled_rows" if nrows == 4 else f"sampled_rows{nrows}"
                    rows.append((est, sms, 1.0 - float(pc.sum()) / (B * H * nq * nk), sws.numel()))
                for est, t, sp_, wsb in rows:
                    rec = dict(date=date, device=dev, commit=args.commit, workload=name, dtype="bf16", head_dim=D,
                               batch=B, heads_q=H, heads_kv=H, seq_q=n, seq_k=n, causal=False,
                               impl=f"sparge-stage1-{est}-nogate", ms=t, tops=None, sparsity=sp_,
                               rel_l1=None, cos_sim=None, dense_kernel_ms=ms_dense, workspace_bytes=wsb)
                    f.write(json.dumps(rec) + "\n")
                    print(f"| {name} {est} | {D} | {n} | {t:.3f} | {ms_dense:.3f} | {t / ms_dense:.3f} | {sp_:.3f} |",
                          flush=True)
    f.close()


if __name__ == "__main__":
    main()
