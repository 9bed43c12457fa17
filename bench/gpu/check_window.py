"""Which of Sparge (each CUDA kernel) and FlexAttention matches a float32 SDPA reference with the
dense sliding-window bool mask (bf16 inputs, B 1, H 8, hd 128, causal, window_left W).

    python3 bench/gpu/check_window.py --lib build-b/libsparge_c.so
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention import Mask, Sparge, measure  # noqa: E402
from bench_window import BLOCK_K, BLOCK_Q, window_mask  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--windows", default="512,4096")
    args = ap.parse_args()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    sp = Sparge(args.lib)
    n, H, D = args.n, 8, 128
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    stream = torch.cuda.current_stream().cuda_stream
    for w in [int(x) for x in args.windows.split(",")]:
        r = torch.arange(n, device="cuda")[:, None]
        c = torch.arange(n, device="cuda")[None, :]
        allowed = (c <= r) & (r - c <= w)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=allowed)
        wc, wi, _, _ = window_mask(H, n, w)
        mask = Mask(wc.data_ptr(), wi.data_ptr(), 1, 0, 1, H, n, n, BLOCK_Q, BLOCK_K)
        for kernel in ("sm90ws", "sm90", "sm80"):
            os.environ["SPARGE_CUDA_KERNEL"] = kernel
            out = torch.full_like(q, float("nan"))
            sp.attention(q, k, v, mask, sp.options(True, pv_threshold=float("inf"), window_left=w), out, stream)
            torch.cuda.synchronize()
            err = measure.rel_l1(out, ref)
            rows = ((out.float() - ref).abs().sum(-1) / ref.abs().sum(-1).clamp_min(1e-6))[0, 0]
            bad = torch.nonzero(rows > 0.05).flatten()
            print(f"W {w} {kernel}: rel_l1 {err:.2e}, rows off by > 5%: {bad.numel()}"
                  f"{' first ' + str(bad[:8].tolist()) if bad.numel() else ''}", flush=True)
        os.environ.pop("SPARGE_CUDA_KERNEL", None)

        def mask_mod(b, h, qi, kv):
            return (qi >= kv) & (qi - kv <= w)
        bm = create_block_mask(mask_mod, None, None, n, n, device="cuda", BLOCK_SIZE=(BLOCK_Q, BLOCK_K))
        o_flex = flex_attention(q, k, v, block_mask=bm)
        print(f"W {w} flex: rel_l1 {measure.rel_l1(o_flex, ref):.2e}", flush=True)


if __name__ == "__main__":
    main()
