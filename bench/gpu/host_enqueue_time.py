"""Host cost of one sparse_attention call through the C ABI against its GPU time, whole and cut
(SPARGE_ROW_CHUNK_BLOCKS = the query blocks: whole; the library's choice: head chunks; and
SPARGE_CHUNK_BY=rows): the enqueue time per call measured while a long sleep kernel holds the
stream (so a call that synchronized would show the sleep), then CUDA events over 10 calls.
bench_stage1.py's smooth input, bf16, B 1, H 32, hd 128, N 8K and 32K. Prints one line per case.

    python3 bench/gpu/host_enqueue_time.py build-q/libsparge_c.so
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention import Sparge  # noqa: E402
from bench_fused_stage1 import sparse_call  # noqa: E402
from bench_stage1 import smooth_inputs  # noqa: E402

lib = sys.argv[1]
sp = Sparge(lib)
gen = torch.Generator(device="cuda").manual_seed(0)
for n in (8192, 32768):
    q, k, v = smooth_inputs(1, 32, n, 128, gen)
    o = torch.empty_like(q)
    opts = sp.options(False)
    for mode, env in (("whole", {"SPARGE_ROW_CHUNK_BLOCKS": str(n // 64)}), ("heads", {}), ("rows", {"SPARGE_CHUNK_BY": "rows"})):
        for e in ("SPARGE_ROW_CHUNK_BLOCKS", "SPARGE_CHUNK_BY"): os.environ.pop(e, None)
        os.environ.update(env)
        ws = torch.empty(sp.workspace_size(q, k, opts, caller_mask=False), dtype=torch.uint8, device="cuda")
        st = torch.cuda.current_stream().cuda_stream

        def call():
            sparse_call(sp, q, k, v, opts, o, ws, st)
        for _ in range(3): call()
        torch.cuda.synchronize()
        # host: enqueue cost per call while the GPU is busy (a long sleep kernel ahead keeps the queue from draining)
        torch.cuda._sleep(int(2e9))
        t0 = time.perf_counter()
        for _ in range(10): call()
        host = (time.perf_counter() - t0) / 10 * 1e3
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(10): call()
        b.record(); torch.cuda.synchronize()
        print(f"N {n} {mode:6} host enqueue {host:.3f} ms/call  gpu {a.elapsed_time(b)/10:.3f} ms/call", flush=True)
