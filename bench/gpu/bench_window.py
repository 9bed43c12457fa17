"""GPU benchmark of sliding-window attention (issue 12): Sparge's native window against
FlexAttention with the same window and the dense causal kernel, same process.

bf16, B 1, H 32, hd 128, causal with window_left = W (a row sees itself and the W keys before it,
flash-attn's window_size = (W, 0)), N in {8K, 32K}, W in {512, 4096}. Sparge runs the window's
allowed 128x64 tiles (nothing predicted: the mask is the window's) through the C ABI; Flex runs a
sliding-window mask_mod (its block mask built once, outside the timing). Rates count only the
window's work: 4·B·H·D·(visible (row, key) pairs) / time ("window TOPS"); the dense causal kernel's
rate on the same shape is printed beside it so that "rate per kept tile" can be compared. Output
is checked against Flex (rel_l1) and must be finite. Records: JSON Lines per docs/bench-schema.md.

    python3 bench/gpu/bench_window.py --lib build-ws/libsparge_c.so --commit $(git rev-parse --short HEAD)
"""
import argparse
import datetime
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention import BLOCK_K, BLOCK_Q, Mask, Sparge, measure, time_ms  # noqa: E402


def window_mask(heads, n, w):
    """The window's allowed blocks per (head, query block): keys [r - w, r] of rows r."""
    nq, nk = math.ceil(n / BLOCK_Q), math.ceil(n / BLOCK_K)
    i = torch.arange(nq, device="cuda")
    first = torch.clamp(i * BLOCK_Q - w, min=0) // BLOCK_K
    last = (torch.clamp((i + 1) * BLOCK_Q, max=n) - 1) // BLOCK_K
    counts = (last - first + 1).to(torch.int32)
    j = torch.arange(nk, device="cuda")
    idx = first[:, None] + j[None, :]
    idx = torch.where(j[None, :] < counts[:, None], idx, torch.zeros_like(idx)).to(torch.int32)
    return (counts.repeat(heads, 1).contiguous(), idx.repeat(heads, 1, 1).contiguous(),
            int(counts.sum()) * heads, nq * nk * heads)  # tiles over all heads


def visible_pairs(n, w):
    """Σ over rows r of min(r, w) + 1."""
    full = max(0, n - w)  # rows r >= w see w + 1 keys
    return full * (w + 1) + sum(min(r, w) + 1 for r in range(min(n, w)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--seqs", default="8192,32768")
    ap.add_argument("--windows", default="512,4096")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--tag", default="window")
    ap.add_argument("--kernels", default="auto",
                    help="SPARGE_CUDA_KERNEL values to time in this process, e.g. sm90ws,sm90ws-persistent "
                         "(each kernel's window rows are compared with its own dense causal rate)")
    args = ap.parse_args()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    sp = Sparge(args.lib)
    dev = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    B, H, D = 1, args.heads, 128
    slug = "".join(ch if ch.isalnum() else "-" for ch in dev).strip("-")
    path = os.path.join(args.out_dir, f"{date}_{slug}_{args.tag}.jsonl")
    out_file = open(path, "w")
    rows = []
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    stream = torch.cuda.current_stream().cuda_stream
    for n in [int(x) for x in args.seqs.split(",")]:
        n_sets = max(1, min(4, math.ceil(3 * l2 / (3 * B * H * n * D * 2))))
        sets = [tuple(torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                for _ in range(n_sets)]
        out = torch.empty(B, H, n, D, device="cuda", dtype=torch.bfloat16)
        # The dense causal kernel on the same shape: the rate a kept tile should be computed at.
        nq, nk = math.ceil(n / BLOCK_Q), math.ceil(n / BLOCK_K)
        counts = torch.tensor([min(nk, ((i + 1) * BLOCK_Q - 1) // BLOCK_K + 1) for i in range(nq)],
                              device="cuda", dtype=torch.int32)
        idx = torch.arange(nk, device="cuda", dtype=torch.int32).repeat(H, nq, 1).contiguous()
        counts = counts.repeat(H, 1).contiguous()
        dmask = Mask(counts.data_ptr(), idx.data_ptr(), 1, 0, B, H, n, n, BLOCK_Q, BLOCK_K)
        dopts = sp.options(True, pv_threshold=float("inf"))
        # The caller's workspace, as a library user passes it (the persistent grid keeps its row
        # counter there).
        ws = torch.empty(max(256, sp.workspace_size(sets[0][0], sets[0][1], dopts)), device="cuda",
                         dtype=torch.uint8)
        kernels = args.kernels.split(",")
        ms_dense = {}
        for kernel in kernels:
            os.environ["SPARGE_CUDA_KERNEL"] = kernel
            print(f"N {n}: dense causal kernel ({kernel})", flush=True)
            ms_dense[kernel] = time_ms(lambda st: sp.attention(st[0], st[1], st[2], dmask, dopts, out, stream, ws=ws),
                                       sets, args.reps)
        os.environ.pop("SPARGE_CUDA_KERNEL", None)
        tiles_dense_causal = int(counts.sum())
        for w in [int(x) for x in args.windows.split(",")]:
            wc, wi, tiles, _ = window_mask(H, n, w)
            wmask = Mask(wc.data_ptr(), wi.data_ptr(), 1, 0, B, H, n, n, BLOCK_Q, BLOCK_K)
            opts = sp.options(True, pv_threshold=float("inf"), window_left=w)
            fn = lambda st: sp.attention(st[0], st[1], st[2], wmask, opts, out, stream, ws=ws)  # noqa: E731
            ms_window, o_sparge = {}, None
            for kernel in kernels:
                os.environ["SPARGE_CUDA_KERNEL"] = kernel
                print(f"N {n} W {w}: sparge ({kernel})", flush=True)
                out.fill_(float("nan"))
                fn(sets[0])
                if not torch.isfinite(out).all():
                    raise SystemExit(f"non-finite output at N={n} W={w} kernel {kernel}")
                if o_sparge is None:
                    o_sparge = out.clone()
                elif not torch.equal(out, o_sparge):
                    raise SystemExit(f"kernel {kernel} differs from {kernels[0]} at N={n} W={w}")
                ms_window[kernel] = time_ms(fn, sets, args.reps)
            os.environ.pop("SPARGE_CUDA_KERNEL", None)

            print(f"N {n} W {w}: flex", flush=True)
            # A fresh compile per window: the compiled kernel bakes the mask_mod's window in, and
            # dynamo did not recompile for a new closure value (the 2026-12-04 run's W 4096 Flex
            # rows ran W 512's mask_mod: rel_l1 4e-2 to Sparge, eager Flex 2e-3 to fp32 SDPA).
            torch._dynamo.reset()
            flex = torch.compile(flex_attention, dynamic=False)

            def mask_mod(b, h, q, kv, w=w):
                return (q >= kv) & (q - kv <= w)
            bm = create_block_mask(mask_mod, None, None, n, n, device="cuda", BLOCK_SIZE=(BLOCK_Q, BLOCK_K))
            ffn = lambda st: flex(st[0], st[1], st[2], block_mask=bm)  # noqa: E731
            o_flex = ffn(sets[0])
            ms_flex = time_ms(ffn, sets, args.reps)
            err = measure.rel_l1(o_sparge, o_flex)
            work = 4 * B * H * D * visible_pairs(n, w)
            base = dict(date=date, device=dev, commit=args.commit, workload="random", dtype="bf16",
                        head_dim=D, batch=B, heads_q=H, heads_kv=H, seq_q=n, seq_k=n, causal=True,
                        window_left=w, window_right=0, cos_sim=None)
            recs = [dict(base, impl="flex", ms=ms_flex, tops=work / (ms_flex * 1e-3) / 1e12, sparsity=None)]
            for i, kernel in enumerate(kernels):
                ms, msd = ms_window[kernel], ms_dense[kernel]
                suffix = "" if i == 0 else f"-{kernel}"
                per_tile_dense = msd / tiles_dense_causal  # counts were repeated per head
                recs += [dict(base, impl="sparge-exact" + suffix, kernel=kernel, ms=ms,
                              tops=work / (ms * 1e-3) / 1e12, sparsity=None, rel_l1_vs_flex=err,
                              tiles=tiles, ms_per_tile_vs_dense_causal=ms / tiles / per_tile_dense),
                         dict(base, impl="sparge-exact-dense-causal" + suffix, kernel=kernel,
                              window_left=None, ms=msd, tops=measure.dense_tops(base, True, msd),
                              sparsity=0.0)]
                rows.append((n, w, kernel, ms, recs[-2]["tops"], ms_flex, recs[0]["tops"], msd,
                             recs[-1]["tops"], ms / tiles / per_tile_dense, err))
            for r in recs:
                out_file.write(json.dumps(r) + "\n")
                out_file.flush()
        del sets, out
        torch.cuda.empty_cache()
    out_file.close()
    print(f"Device {dev}, commit {args.commit}, {date}: bf16, B {B}, H {H}, hd {D}, causal, window_left W; "
          "window TOPS = 4·B·H·D·visible pairs / time")
    print("| N | W | kernel | sparge ms | sparge window TOPS | flex ms | flex window TOPS | dense causal ms (TOPS) | "
          "time per tile / dense causal's | rel_l1 vs flex |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, w, kernel, ms, t, msf, tf, msd, td, ratio, err in rows:
        print(f"| {n} | {w} | {kernel} | {ms:.3f} | {t:.0f} | {msf:.3f} | {tf:.0f} | {msd:.2f} ({td:.0f}) | "
              f"{ratio:.2f} | {err:.1e} |")


if __name__ == "__main__":
    main()
