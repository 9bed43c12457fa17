"""Token reordering on the GPU (issue 10): the Hilbert gathers of q, k, v and the inverse of the
output as sparge.attention(token_grid=...) runs them (torch.ops.sparge.permute_tokens, one
strided copy each) against torch's index_select on the same tensors, in one process. bf16, B 1,
H 32, hd 128, a video grid of T x H x W tokens; HND inputs and NHD ones (a transposed view, as
diffusers passes them). CUDA events, median of --reps after warm-up, inputs larger than L2.

    python3 bench/gpu/bench_permute.py --commit $(git rev-parse --short HEAD) --out-dir .
"""
import argparse
import datetime

import torch

import sparge  # noqa: F401 - registers torch.ops.sparge
from jsonl_out import record_path, write_jsonl
from sparge import ops as sparge_ops


def time_ms(fn, reps):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--grids", default="8x64x64,32x64x64")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out-dir", default=".")
    args = ap.parse_args()
    dev = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    B, H, D = 1, 32, 128
    records = []
    print("| tokens | layout | op | torch index_select ms | sparge permute_tokens ms | GB/s (sparge) | speedup |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.grids.split(","):
        grid = tuple(int(x) for x in spec.split("x"))
        n = grid[0] * grid[1] * grid[2]
        order, gather = sparge_ops._hilbert_gathers(n, grid, 0, torch.device("cuda"))
        inverse = torch.empty_like(gather).scatter_(0, gather, torch.arange(n, device="cuda"))
        for layout in ("HND", "NHD"):
            shape = (B, H, n, D) if layout == "HND" else (B, n, H, D)
            qkv = [torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
            hnd = [t if layout == "HND" else t.transpose(1, 2) for t in qkv]
            out = torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16)
            cases = {
                "gather q,k,v": (lambda: [t.index_select(2, gather) for t in hnd],
                                 lambda: [torch.ops.sparge.permute_tokens(t, order, 0, False) for t in hnd], 3),
                "inverse out": (lambda: out.index_select(2, inverse),
                                lambda: torch.ops.sparge.permute_tokens(out, order, 0, True), 1),
            }
            for name, (ref_fn, fn, tensors) in cases.items():
                got, ref = fn(), ref_fn()
                got, ref = (got, ref) if isinstance(got, list) else ([got], [ref])
                if not all(torch.equal(g, r) for g, r in zip(got, ref)):
                    raise SystemExit(f"permute_tokens differs from index_select: {spec} {layout} {name}")
                ms_ref, ms = time_ms(ref_fn, args.reps), time_ms(fn, args.reps)
                moved = 2 * tensors * B * H * n * D * 2  # read + write, 2-byte elements
                print(f"| {n} | {layout} | {name} | {ms_ref:.3f} | {ms:.3f} | {moved / ms / 1e6:.0f} | {ms_ref / ms:.2f} |")
                for impl, t in (("torch-index_select", ms_ref), ("sparge-permute_tokens", ms)):
                    records.append(dict(date=date, device=dev, commit=args.commit, impl=impl, workload=f"video-grid-{spec}",
                                        dtype="bf16", head_dim=D, batch=B, heads_q=H, heads_kv=H, seq_q=n, seq_k=n,
                                        causal=False, sparsity=None, ms=t, tops=None, rel_l1=None, cos_sim=None,
                                        op=name, layout=layout, bytes_moved=moved, gbps=moved / t / 1e6, reps=args.reps))
    write_jsonl(record_path(args.out_dir, dev, f"permute-{args.commit}"), records)


if __name__ == "__main__":
    main()
