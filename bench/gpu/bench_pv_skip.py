#!/usr/bin/env python3
"""What the λ rule (pv_threshold) saves on the GPU: the same dense block mask timed with λ finite
and with λ = inf, on inputs where a known share of the heads has an attention sink.

Input: bf16, B 1, H 32, every key block kept. In `--sink-heads` of the heads, channel 0 of every
query and of the keys of block 0 is `--sink` and 0 for the other keys: block 0 then dominates every
row, and once it is walked (first: kept blocks ascend) the λ rule skips every later block. The
other heads are plain Gaussian, where the rule skips nothing. So the skip rate is set by the
sink-head share, and the time saved shows what leaving out P·V is worth.

Reported per case: the share of (16-row group, key block) pairs the rule skips (emulated here in
PyTorch from the fp32 scores: the rule of docs/method.md, the running max being the exclusive
cumulative max of the block maxima), the share of (64-row warpgroup, turn) pairs in which every
warp skips every block of the turn (what a warpgroup-level skip of the sm90ws kernel can leave
out: a wgmma is issued by four warps at once), both timings, the time saved, and rel_l1 of each
output against fp32 SDPA. Records per docs/bench-schema.md.

    python3 bench/gpu/bench_pv_skip.py --lib build-ws/libsparge_c.so --commit $(git rev-parse --short HEAD)
    python3 bench/gpu/bench_pv_skip.py --md-from bench/results/<file>.jsonl   # the table again
"""
import argparse
import datetime
import importlib.util
import json
import math
import os

try:  # --md-from works without PyTorch
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def _load(name, *path):
    full = os.path.join(os.path.dirname(os.path.abspath(__file__)), *path)
    spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


attn_bench = _load("bench_attention", "bench_attention.py")  # Sparge (ctypes), Mask, random masks
measure = attn_bench.measure
BLOCK_Q, BLOCK_K = attn_bench.BLOCK_Q, attn_bench.BLOCK_K
LOG2E = 1.4426950408889634


def sink_inputs(heads, n, d, sink_heads, sink, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(1, heads, n, d, device="cuda", generator=g) for _ in range(3))
    q[:, :sink_heads, :, 0] = sink
    k[:, :sink_heads, :, 0] = 0.0
    k[:, :sink_heads, :BLOCK_K, 0] = sink
    return tuple(t.to(torch.bfloat16) for t in (q, k, v))


def emulate_skips(q, k, lam, blocks_per_turn, rows_per_chunk=4096):
    """(skipped, visited) over (16-row group, block) pairs, and (skipped, visited) over
    (64-row warpgroup, turn) pairs, for a dense non-causal mask (blocks walked in order)."""
    _, heads, n, d = q.shape
    nk = math.ceil(n / BLOCK_K)
    scale = LOG2E / math.sqrt(d)
    g_skip = g_all = t_skip = t_all = 0
    for h in range(heads):
        kh = k[0, h].float()
        for r0 in range(0, n, rows_per_chunk):
            s = (q[0, h, r0:r0 + rows_per_chunk].float() @ kh.T) * scale  # [rows, n]
            rows = s.shape[0]
            pad = nk * BLOCK_K - n
            if pad:
                s = F.pad(s, (0, pad), value=-math.inf)
            m_loc = s.view(rows, nk, BLOCK_K).amax(-1)  # [rows, nk]
            m_run = torch.cat([torch.full_like(m_loc[:, :1], -math.inf),
                               m_loc.cummax(dim=1).values[:, :-1]], dim=1)
            negligible = (m_loc == -math.inf) | ((m_run != -math.inf) & (m_loc - m_run <= -lam))
            assert rows % 64 == 0, "the emulation assumes whole warpgroups"
            group = negligible.view(rows // 16, 16, nk).all(dim=1)  # [groups, nk]
            g_skip += int(group.sum())
            g_all += group.numel()
            turns = math.ceil(nk / blocks_per_turn)
            tpad = turns * blocks_per_turn - nk
            wg = group.view(rows // 64, 4, nk).all(dim=1)
            if tpad:
                wg = F.pad(wg, (0, tpad), value=True)  # missing blocks of the last turn
            turn = wg.view(rows // 64, turns, blocks_per_turn).all(dim=-1)
            t_skip += int(turn.sum())
            t_all += turn.numel()
    return g_skip, g_all, t_skip, t_all


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default="build-dev/libsparge_c.so")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--seqs", default="8192,32768")
    ap.add_argument("--head-dims", default="128,64")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--sink-fractions", default="0.25,0.5,1")
    ap.add_argument("--sink", type=float, default=12.0)
    ap.add_argument("--lam", type=float, default=8.0, help="pv_threshold (log2 units)")
    ap.add_argument("--kernels", default="auto,sm80")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--tag", default="pv-skip")
    ap.add_argument("--md-from", help="only print the Markdown table of an existing .jsonl file")
    args = ap.parse_args()
    if args.md_from:
        with open(args.md_from) as f:
            print(markdown([json.loads(line) for line in f if line.strip()]), end="")
        return

    sp = attn_bench.Sparge(args.lib)
    dev = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    slug = "".join(ch if ch.isalnum() else "-" for ch in dev).strip("-")
    path = os.path.join(args.out_dir, f"{date}_{slug}_{args.tag}.jsonl")
    live = open(path, "w")
    stream = torch.cuda.current_stream().cuda_stream
    H = args.heads
    rows = []
    for d in [int(x) for x in args.head_dims.split(",")]:
        blocks_per_turn = 2 if d == 128 else 3  # AttnTraitsSm90Ws::kBlocksPerTurn
        for n in [int(x) for x in args.seqs.split(",")]:
            keep, counts, indices, _ = attn_bench.random_block_mask(H, n, False, 0.0, seed=1)
            mask = attn_bench.Mask(counts.data_ptr(), indices.data_ptr(), 1, 0, 1, H, n, n, BLOCK_Q, BLOCK_K)
            out = torch.empty(1, H, n, d, device="cuda", dtype=torch.bfloat16)
            for frac in [float(x) for x in args.sink_fractions.split(",")]:
                sink_heads = round(frac * H)
                # Two input sets of the same construction (different seeds) rotate, so that the
                # timed calls do not find them in L2.
                sets = [sink_inputs(H, n, d, sink_heads, args.sink, seed=n + d + i) for i in range(2)]
                q0, k0, v0 = sets[0]
                ref = F.scaled_dot_product_attention(q0.float(), k0.float(), v0.float())
                g_skip, g_all, t_skip, t_all = emulate_skips(q0, k0, args.lam, blocks_per_turn)
                for kernel in args.kernels.split(","):
                    os.environ["SPARGE_CUDA_KERNEL"] = kernel
                    res = {}
                    for lam in (math.inf, args.lam):
                        opts = sp.options(False, pv_threshold=lam)
                        fn = lambda st: sp.attention(st[0], st[1], st[2], mask, opts, out, stream)  # noqa: E731
                        out.fill_(float("nan"))
                        fn(sets[0])
                        if not torch.isfinite(out).all():
                            raise SystemExit(f"non-finite output: kernel {kernel} d {d} N {n} λ {lam}")
                        err = measure.rel_l1(out, ref)
                        ms = measure.time_ms(fn, warmup=3, reps=args.reps, inputs=sets, device="cuda")
                        res[lam] = (ms, err)
                    os.environ.pop("SPARGE_CUDA_KERNEL", None)
                    ms_inf, err_inf = res[math.inf]
                    ms_lam, err_lam = res[args.lam]
                    shape = dict(seq_q=n, seq_k=n, causal=False)
                    base = dict(date=date, device=dev, commit=args.commit, workload=f"sink-heads-{frac:g}",
                                dtype="bf16", head_dim=d, batch=1, heads_q=H, heads_kv=H, **shape)
                    r = dict(base, impl="sparge-exact", kernel=kernel, sparsity=0.0, ms=ms_lam,
                             tops=measure.dense_tops(dict(base), False, ms_lam), rel_l1=err_lam,
                             cos_sim=None, pv_threshold=args.lam, sink=args.sink,
                             pv_skipped_groups=g_skip / g_all, pv_skipped_warpgroup_turns=t_skip / t_all,
                             ms_lambda_inf=ms_inf, rel_l1_lambda_inf=err_inf,
                             time_saved=1.0 - ms_lam / ms_inf)
                    rows.append(r)
                    live.write(json.dumps(r) + "\n")
                    live.flush()
                    print(json.dumps(r), flush=True)
                del sets
            torch.cuda.empty_cache()
    live.close()
    print(markdown(rows), end="")


def markdown(rows):
    lines = [f"Device {rows[0]['device']}, commit {rows[0]['commit']}, {rows[0]['date']}: bf16, B 1, "
             f"H {rows[0]['heads_q']}, dense mask, λ = {rows[0]['pv_threshold']:g} vs inf, sink "
             f"{rows[0]['sink']:g}.", "",
             "| hd | N | sink heads | kernel | skipped (16-row, block) | skipped (WG, turn) | ms λ=inf | "
             "ms λ | saved | rel_l1 λ / inf |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['head_dim']} | {r['seq_q']} | {r['workload'][len('sink-heads-'):]} | {r['kernel']} | "
                     f"{100 * r['pv_skipped_groups']:.1f}% | {100 * r['pv_skipped_warpgroup_turns']:.1f}% | "
                     f"{r['ms_lambda_inf']:.2f} | {r['ms']:.2f} | {100 * r['time_saved']:.1f}% | "
                     f"{r['rel_l1']:.2e} / {r['rel_l1_lambda_inf']:.2e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
