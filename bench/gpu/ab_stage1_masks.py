"""Two libraries' masks and outputs on the same calls: what a Stage-1 change moved. Per library,
one whole sparse_attention call through the C ABI (library defaults, mask out), on bench_stage1.py's
"smooth" input (every block estimated) and on a causal one, bf16, B 1, H 32, hd 128: the kept
tiles, how many tiles differ from the first library's mask, and each output's rel L1 against
the first library's and against fp32 attention (chunks of 4 heads, PyTorch's efficient
kernel). A mask that differs on a few tiles is what a rounding change near a threshold gives;
a change of the kept count or of the error is not.

    python3 bench/gpu/ab_stage1_masks.py --libs base=/tmp/ab/base_c.so work=/tmp/bins/libsparge_c.so
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_attention as ba  # noqa: E402
from bench_fused_stage1 import dense_mask, reference, sparse_call  # noqa: E402
from bench_stage1 import smooth_inputs  # noqa: E402

rel_l1 = ba.measure.rel_l1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--libs", nargs="+", required=True, help="name=path, the first is the baseline")
    ap.add_argument("--seqs", default="8192,32768")
    ap.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                    help="a sparge_options field set by name over the defaults (numeric; enums by "
                         "value, e.g. estimate=0 for the pooled map, whose scores read the pooled "
                         "rows, not only the similarities); repeatable")
    args = ap.parse_args()
    extra = {e.split("=", 1)[0]: float(e.split("=", 1)[1]) for e in args.option}
    if extra:
        print(f"options over the defaults: {extra}\n")
    libs = [(e.split("=", 1)[0], ba.Sparge(e.split("=", 1)[1])) for e in args.libs]
    B, H, D = 1, 32, 128
    stream = torch.cuda.current_stream().cuda_stream
    print("| input | N | causal | lib | kept tiles | tiles differing from the first | rel L1 vs first | rel L1 vs fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for n in [int(x) for x in args.seqs.split(",")]:
        for causal in (False, True):
            gen = torch.Generator(device="cuda").manual_seed(0)
            q, k, v = smooth_inputs(B, H, n, D, gen)
            ref = reference(q, k, v, causal)
            nq, nk = math.ceil(n / ba.BLOCK_Q), math.ceil(n / ba.BLOCK_K)
            first = None
            for name, sp in libs:
                opts = sp.options(causal, **extra)
                # A call that also writes the caller's mask may be cut differently: room for both.
                ws = torch.empty(max(sp.workspace_size(q, k, opts, caller_mask=False),
                                     sp.workspace_size(q, k, opts, caller_mask=True)),
                                 dtype=torch.uint8, device="cuda")
                counts = torch.empty(B * H * nq, device="cuda", dtype=torch.int32)
                idx = torch.empty(B * H * nq * nk, device="cuda", dtype=torch.int32)
                mask = ba.Mask(counts.data_ptr(), idx.data_ptr(), 1, 0, B, H, n, n, ba.BLOCK_Q, ba.BLOCK_K)
                o = torch.full_like(q, float("nan"))
                sparse_call(sp, q, k, v, opts, o, ws, stream, mask)
                torch.cuda.synchronize()
                if not torch.isfinite(o).all():
                    raise SystemExit(f"{name}: non-finite output at N={n} causal={causal}")
                dense = dense_mask(counts, idx, nk)
                if first is None:
                    first = (dense, o.clone())
                diff = int((dense != first[0]).sum())
                print(f"| smooth | {n} | {causal} | {name} | {int(dense.sum())} | {diff} | "
                      f"{rel_l1(o, first[1]):.2e} | {rel_l1(o, ref):.4f} |", flush=True)
                del ws
            del q, k, v, ref, first
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
