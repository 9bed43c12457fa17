"""Whole sparse_attention calls through the C ABI without a caller mask, so that long calls are cut
(common/row_chunks.h): the library's choice ("chunked": head chunks where one KV-head group fits,
since 2026-12-06), row chunks (SPARGE_CHUNK_BY=rows; a library that predates the switch takes
its own choice there) and the same calls forced whole (SPARGE_ROW_CHUNK_BLOCKS = the query block
count: one chunk), beside dense SDPA, same process. bf16, B 1, H 32, hd 128, not
causal, the library's default options; inputs "random" (no block similar: Stage 1 gated) and
"smooth" (bench_stage1.py's: block-self-similar, local attention, every block estimated).

    python3 bench/gpu/bench_row_chunks.py --lib build-q/libsparge_c.so --commit $(git rev-parse --short HEAD)
"""
import argparse
import datetime
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention import Sparge, time_ms  # noqa: E402
from bench_fused_stage1 import sparse_call  # noqa: E402
from jsonl_out import record_path, write_jsonl  # noqa: E402
from bench_stage1 import smooth_inputs  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--seqs", default="32768")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out-dir", default=".")
    args = ap.parse_args()
    sp = Sparge(args.lib)
    dev = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    B, H, D = 1, 32, 128
    gen = torch.Generator(device="cuda").manual_seed(0)
    records = []
    print("| input | N | sparge chunked ms | sparge row chunks ms | sparge whole ms | SDPA ms | chunked × SDPA "
          "| row chunks × SDPA | whole × SDPA |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.seqs.split(",")):
        for name in ("random", "smooth"):
            if name == "smooth":
                sets = [smooth_inputs(B, H, n, D, gen) for _ in range(2)]
            else:
                sets = [tuple(torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16, generator=gen)
                              for _ in range(3)) for _ in range(2)]
            opts = sp.options(False)
            o = torch.empty_like(sets[0][0])
            ms = {}
            for label, env in (("chunked", {}), ("rows", {"SPARGE_CHUNK_BY": "rows"}),
                               ("whole", {"SPARGE_ROW_CHUNK_BLOCKS": str((n + 63) // 64)})):
                for name_ in ("SPARGE_CHUNK_BY", "SPARGE_ROW_CHUNK_BLOCKS"):
                    os.environ.pop(name_, None)
                os.environ.update(env)
                q0, k0 = sets[0][0], sets[0][1]
                ws = torch.empty(sp.workspace_size(q0, k0, opts, caller_mask=False), dtype=torch.uint8,
                                 device="cuda")
                stream = torch.cuda.current_stream().cuda_stream

                def call(qkv):
                    sparse_call(sp, *qkv, opts, o, ws, stream)

                ms[label] = time_ms(call, sets, args.reps)
                if not torch.isfinite(o).all():
                    raise RuntimeError(f"{name} {label}: non-finite output")
            for name_ in ("SPARGE_CHUNK_BY", "SPARGE_ROW_CHUNK_BLOCKS"):
                os.environ.pop(name_, None)
            ms["sdpa"] = time_ms(lambda qkv: F.scaled_dot_product_attention(*qkv), sets, args.reps)
            base = dict(date=date, device=dev, commit=args.commit, workload=name, dtype="bf16", head_dim=D,
                        batch=B, heads_q=H, heads_kv=H, seq_q=n, seq_k=n, causal=False, sparsity=None,
                        rel_l1=None, cos_sim=None)
            tops = lambda t: 4.0 * B * H * n * n * D / (t * 1e-3) / 1e12  # noqa: E731
            for label in ("chunked", "rows", "whole", "sdpa"):
                records.append(dict(base, impl="sdpa" if label == "sdpa" else f"sparge-exact-{label}",
                                    ms=ms[label], tops=tops(ms[label])))
            print(f"| {name} | {n} | {ms['chunked']:.3f} | {ms['rows']:.3f} | {ms['whole']:.3f} | {ms['sdpa']:.3f} | "
                  f"{ms['sdpa'] / ms['chunked']:.2f} | {ms['sdpa'] / ms['rows']:.2f} | "
                  f"{ms['sdpa'] / ms['whole']:.2f} |", flush=True)
    write_jsonl(record_path(args.out_dir, dev, f"row-chunks-{args.commit}"), records)


if __name__ == "__main__":
    main()
