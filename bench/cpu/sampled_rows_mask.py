"""CPU: Stage 1 with estimate sampled_rows and a dense attention mask (bool: key padding of the
last eighth and two packed sequences, block-diagonal) against a dense attention call with the
same mask (sim_threshold 1: every tile kept), process CPU time (so that other jobs of a shared
machine do not count), one thread, median of 3 after a warm-up; B 1, H 4, hd 64, fp32.

    OMP_NUM_THREADS=1 python3 bench/cpu/sampled_rows_mask.py <label>   # the JSON line last
"""
import os, sys, time, json
import torch, sparge
torch.set_num_threads(1)
torch.manual_seed(0)
B, H, D = 1, 4, 64
res = []
for N in (2048, 4096):
    q, k, v = (torch.randn(B, H, N, D) for _ in range(3))
    m = torch.ones(B, 1, N, N, dtype=torch.bool)
    m[..., :, N - N // 8:] = False                # key padding
    m[..., : N // 2, N // 2:] = False             # two packed sequences
    m[..., N // 2:, : N // 2] = False
    def t(fn, reps=3):
        fn(); best = []
        for _ in range(reps):
            c0 = time.process_time(); fn(); best.append(time.process_time() - c0)
        return sorted(best)[len(best) // 2]
    for rows in (4, 16):
        s1 = t(lambda: sparge.predict_block_mask(q, k, attn_mask=m, estimate="sampled_rows",
                                                 sample_rows=rows, sim_threshold=-1.0))
        dense = t(lambda: sparge.attention(q, k, v, attn_mask=m, sim_threshold=1.0))
        res.append(dict(N=N, rows=rows, stage1_s=s1, dense_call_s=dense, ratio=s1 / dense))
        print(f"N {N} rows {rows}: stage1 {s1:.3f} s, dense call {dense:.3f} s, ratio {s1/dense:.3f}", flush=True)
print(json.dumps(dict(label=sys.argv[1], results=res)))
