"""Stage 1 on long rows (issue 14, a million tokens), A/B of prebuilt libraries in one process:
per library, Stage 1 alone (sparge_predict_block_mask, the mask in this process's memory) and the
whole call (sparge_sparse_attention, row chunks), B 1, H 8, hd 128, bf16, random inputs, top-k
0.1 and TopCdf 0.9 with the gate off; the masks of every library are compared with the first's
(counts and every kept index), so a faster selection that changes a mask shows as "differs".
At 256K tokens the rows (4096 key blocks) take the shared-memory selection unless
--force-long-rows (SPARGE_CUDA_LONG_ROWS=all) sends them to the long-row one; a library given as
name=path:long runs with that switch on alone (one library, both paths, in one process).
--workload smooth: local, block-self-similar q and k (bench_stage1.py's smooth_inputs), sharper
rows than random ones.

    python3 bench/gpu/bench_long_rows.py --libs base=/tmp/ab/base.so work=build/libsparge_c.so \
        --commit $(git rev-parse --short HEAD) --out long_rows.jsonl
"""
import argparse
import datetime
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jsonl_out  # noqa: E402
from bench_attention import BLOCK_K, BLOCK_Q, Mask, Sparge, measure  # noqa: E402
from bench_stage1 import smooth_inputs  # noqa: E402
import ctypes as C  # noqa: E402


class LongRowsSwitch:
    """SPARGE_CUDA_LONG_ROWS=all for one library's calls (read by the library at each call)."""

    def __init__(self, on):
        self.on = on

    def __enter__(self):
        if self.on:
            os.environ["SPARGE_CUDA_LONG_ROWS"] = "all"

    def __exit__(self, *exc):
        if self.on:
            os.environ.pop("SPARGE_CUDA_LONG_ROWS", None)


def whole_call(sp, q, k, v, opts, o, ws, stream):
    tq, tk, tv, to = sp.tensor(q), sp.tensor(k), sp.tensor(v), sp.tensor(o)
    rc = sp.lib.sparge_sparse_attention(C.byref(tq), C.byref(tk), C.byref(tv), opts, C.byref(to),
                                        None, C.c_void_p(ws.data_ptr()), C.c_size_t(ws.numel()),
                                        C.c_void_p(stream), None, sp.err, C.c_size_t(1024))
    sp.check(rc, "sparge_sparse_attention")


def same_mask(a, b, nk):
    """Counts equal and every kept index equal (entries past a row's count are not compared)."""
    if not torch.equal(a[0], b[0]):
        return False
    for r0 in range(0, a[0].numel(), 4096):  # rows in slices: a [rows, nk] bool stays small
        counts = a[0].view(-1)[r0:r0 + 4096]
        valid = torch.arange(nk, device=counts.device)[None, :] < counts[:, None].long()
        if not torch.equal(a[1].view(-1, nk)[r0:r0 + 4096][valid],
                           b[1].view(-1, nk)[r0:r0 + 4096][valid]):
            return False
    return True


def measure_lib(sp, q, k, v, o, causal, select, value, first, stream, args):
    """One library on one case: Stage 1's time and mask (compared with `first`, the first
    library's, which it becomes if None), and at top-k the whole call's time."""
    H, n = q.shape[1], q.shape[2]
    nq, nk = -(-n // BLOCK_Q), -(-n // BLOCK_K)
    opts = sp.options(causal, select=1 if select == "topk" else 0, select_value=value,
                      sim_threshold=-1.0)
    counts = torch.empty((1, H, nq), dtype=torch.int32, device="cuda")
    indices = torch.empty((1, H, nq, nk), dtype=torch.int32, device="cuda")
    mask = Mask(counts.data_ptr(), indices.data_ptr(), 1, 0, 1, H, n, n, BLOCK_Q, BLOCK_K)
    ws = torch.empty(max(1, sp.workspace_size(q, k, opts)), dtype=torch.uint8, device="cuda")
    stage1 = measure.time_ms(lambda: sp.predict(q, k, opts, mask, ws, stream), warmup=1,
                             reps=args.reps, device="cuda")
    torch.cuda.synchronize()
    kept = float(counts.double().sum())
    equal = None if first is None else same_mask(first, (counts, indices), nk)
    first = (counts, indices) if first is None else first
    del ws
    whole = None
    if not args.no_whole_call and select == "topk":
        ws = torch.empty(max(1, sp.workspace_size(q, k, opts, caller_mask=False)),
                         dtype=torch.uint8, device="cuda")
        whole = measure.time_ms(lambda: whole_call(sp, q, k, v, opts, o, ws, stream), warmup=1,
                                reps=args.reps, device="cuda")
        del ws
    torch.cuda.empty_cache()
    return dict(stage1_ms=stage1, whole_ms=whole, kept_tiles=kept, mask_equals_first=equal), first


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--libs", nargs="+", required=True, help="name=path of libsparge_c.so")
    ap.add_argument("--tokens", type=int, nargs="+", default=[262144, 1048576])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--force-long-rows", action="store_true")
    ap.add_argument("--workload", default="random", choices=["random", "smooth"])
    ap.add_argument("--no-whole-call", action="store_true")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.force_long_rows:
        os.environ["SPARGE_CUDA_LONG_ROWS"] = "all"
    libs = []
    for e in args.libs:
        lib_name, path = e.split("=", 1)
        long_rows = path.endswith(":long")
        libs.append((lib_name, Sparge(path[:-len(":long")] if long_rows else path), long_rows))
    H, D = args.heads, 128
    stream = torch.cuda.current_stream().cuda_stream
    name = torch.cuda.get_device_name()
    records = []
    for n in args.tokens:
        if args.workload == "smooth":
            q, k, v = smooth_inputs(1, H, n, D, torch.Generator(device="cuda").manual_seed(n))
        else:
            gen = torch.Generator(device="cpu").manual_seed(n)
            q, k, v = (torch.randn((1, H, n, D), generator=gen).to("cuda", torch.bfloat16)
                       for _ in range(3))
        o = torch.empty_like(q)
        for select, value in (("topk", 0.1), ("topcdf", 0.9)):
            for causal in (False, True):
                first = None
                for lib_name, sp, long_rows in libs:
                    with LongRowsSwitch(long_rows):
                        r, first = measure_lib(sp, q, k, v, o, causal, select, value, first,
                                               stream, args)
                    records.append(dict(lib=lib_name, long_rows=long_rows or args.force_long_rows,
                                        seq_q=n, seq_k=n, select=select, select_value=value,
                                        causal=causal, **r))
                    equal = r["mask_equals_first"]
                    whole = r["whole_ms"]
                    print(f"{lib_name:>10} N {n:>8} {select:>6} {value:<4} causal {causal!s:>5} "
                          f"stage1 {r['stage1_ms']:9.2f} ms  whole "
                          f"{'-' if whole is None else f'{whole:9.2f}'} ms  "
                          f"mask {'first' if equal is None else 'equal' if equal else 'DIFFERS'}",
                          file=sys.stderr, flush=True)
                del first
        del q, k, v, o
        torch.cuda.empty_cache()
    base = dict(date=datetime.date.today().isoformat(), device=name, commit=args.commit,
                workload=args.workload, dtype="bf16", head_dim=D, batch=1, heads_q=H, heads_kv=H,
                impl="sparge-exact", stage="stage1")
    jsonl_out.emit([dict(base, **r) for r in records], args.out)


if __name__ == "__main__":
    main()
