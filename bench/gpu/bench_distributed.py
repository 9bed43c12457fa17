"""Sequence-parallel Sparge across GPUs (issue 16): sparge.distributed's Ulysses, ring and hybrid
against one GPU's sparge.attention on the same problem, in one run.

Issue 16's targets: 128K tokens, hd 128, 32 heads, sparsity 0.9 (top-k 0.1, gate off): Ulysses
≥ 1.8× per doubling of GPUs, the ring within 1.3× of Ulysses' time, outputs equal to one GPU's
within bf16 rounding. Spawns one process per GPU (NCCL); rank 0 first times the one-GPU call.
Each timed call: barrier, synchronize, the call, synchronize, barrier (wall clock; the median
of --reps after --warmup). One JSON line per case (docs/bench-schema.md) with `world_size`,
`mode`, `speedup` (one GPU's time / this one), `rel_l1` of the gathered output against the
one-GPU output (nothing else is a reference at 128K), `tops` the dense-equivalent rate of the
whole problem; `pv_threshold` null means inf (λ off, the default here).

    python3 bench/gpu/bench_distributed.py --world 2 4 --commit $(git rev-parse --short HEAD)
    python3 bench/gpu/bench_distributed.py --device cpu --tiny     # gloo smoke test (CI)
"""
import argparse
import datetime
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jsonl_out  # noqa: E402  (bench/gpu/jsonl_out.py)

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sparge  # noqa: E402
import sparge.distributed as sd  # noqa: E402


def inputs(args, device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape_q = (1, args.heads, args.tokens, args.head_dim)
    shape_kv = (1, args.heads_kv, args.tokens, args.head_dim)
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    return [torch.randn(s, generator=gen).to(device=device, dtype=dtype)
            for s in (shape_q, shape_kv, shape_kv)]


def sync(device):
    if device != "cpu":
        torch.cuda.synchronize()


def timed(fn, device, reps, warmup, barrier=True):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if barrier:
            dist.barrier()
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        if barrier:
            dist.barrier()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def rel_l1(a, b):
    return float((a.double() - b.double()).abs().sum() / b.double().abs().sum())


def groups_for(mode, world):
    """(ulysses_group, ring_group) of a mode; every rank creates every group."""
    if mode == "ulysses":
        return dist.group.WORLD, None
    if mode == "ring":
        return None, dist.group.WORLD
    u = 2  # hybrid: Ulysses within pairs, the ring across them
    u_groups = [dist.new_group(list(range(g * u, (g + 1) * u))) for g in range(world // u)]
    r_groups = [dist.new_group(list(range(i, world, u))) for i in range(u)]
    rank = dist.get_rank()
    return u_groups[rank // u], r_groups[rank % u]


def worker(rank, world, args, init_file, one_gpu, ref_file, queue):
    device = "cpu" if args.device == "cpu" else f"cuda:{rank}"
    if device != "cpu":
        torch.cuda.set_device(rank)
    dist.init_process_group("gloo" if device == "cpu" else "nccl",
                            init_method=f"file://{init_file}", rank=rank, world_size=world)
    q, k, v = inputs(args, device)
    # The pooled map in every mode: the ring's Stage 1 takes it (its key side comes from gathered
    # key blocks), so that all modes predict the same mask.
    opts = dict(topk=args.topk, sim_threshold=-1.0, pv_threshold=args.pv_threshold,
                estimate="pooled")
    reference = torch.load(ref_file) if rank == 0 else None  # one device's outputs (cpu)
    modes = ["ulysses", "ring"] + (["hybrid"] if world >= 4 and world % 2 == 0 else [])
    for mode in modes:
        for causal in (False, True):
            ug, rg = groups_for(mode, world)
            lay = dict(ulysses_group=ug, ring_group=rg, is_causal=causal)
            shard = [sd.shard_sequence(t, **lay) for t in (q, k, v)]
            with torch.no_grad():
                ms, out = timed(lambda: sd.attention(*shard, **lay, **opts), device, args.reps,
                                args.warmup)
                whole = sd.gather_sequence(out, **lay)
            if rank == 0:
                base = one_gpu[causal]
                queue.put(dict(mode=mode, causal=causal, ms=ms, speedup=base / ms,
                               rel_l1=rel_l1(whole.cpu(), reference[causal])))
    dist.barrier()
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--world", type=int, nargs="+", default=[2])
    ap.add_argument("--tokens", type=int, default=131072)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--heads-kv", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--topk", type=float, default=0.1)
    ap.add_argument("--pv-threshold", type=float, default=float("inf"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--out", default=None, help="a .jsonl path (default: stdout only)")
    ap.add_argument("--tiny", action="store_true", help="a small problem (smoke test)")
    args = ap.parse_args()
    if args.tiny:
        args.tokens, args.heads, args.heads_kv, args.head_dim = 1024, 4, 2, 32
        args.reps, args.warmup = 1, 0
    if args.device == "cuda":
        have = torch.cuda.device_count()
        if have < max(args.world):
            sys.exit(f"--world {max(args.world)} needs that many GPUs, {have} visible")
        name = torch.cuda.get_device_name(0)
    else:
        name = "cpu"

    # One device: the whole problem through sparge.attention (also the outputs' reference).
    device = "cpu" if args.device == "cpu" else "cuda:0"
    q, k, v = inputs(args, device)
    # The pooled map in every mode: the ring's Stage 1 takes it (its key side comes from gathered
    # key blocks), so that all modes predict the same mask.
    opts = dict(topk=args.topk, sim_threshold=-1.0, pv_threshold=args.pv_threshold,
                estimate="pooled")
    one_gpu, reference = {}, {}
    records = []
    base = dict(date=datetime.date.today().isoformat(), device=name, commit=args.commit,
                workload="random", dtype="bf16" if args.device == "cuda" else "fp32",
                head_dim=args.head_dim, batch=1, heads_q=args.heads, heads_kv=args.heads_kv,
                seq_q=args.tokens, seq_k=args.tokens, topk=args.topk,
                pv_threshold=args.pv_threshold if math.isfinite(args.pv_threshold) else None,
                cos_sim=None)
    for causal in (False, True):
        with torch.no_grad():
            ms, out = timed(lambda: sparge.attention(q, k, v, is_causal=causal,
                                                     return_stats=True, **opts),
                            device, args.reps, args.warmup, barrier=False)
        one_gpu[causal] = ms
        reference[causal] = out[0].cpu()
        work = 4 * args.heads * args.tokens * args.tokens * args.head_dim / (2 if causal else 1)
        records.append(dict(base, impl="sparge-exact", mode="one-device", world_size=1,
                            causal=causal, sparsity=out[1].sparsity, ms=ms,
                            tops=work / ms / 1e9, speedup=1.0, rel_l1=0.0))
    del q, k, v
    if args.device == "cuda":
        torch.cuda.empty_cache()

    for world in args.world:
        ctx = mp.get_context("spawn")
        queue = ctx.SimpleQueue()
        with tempfile.TemporaryDirectory() as tmp:
            ref_file = os.path.join(tmp, "reference.pt")
            torch.save(reference, ref_file)
            mp.start_processes(worker, args=(world, args, os.path.join(tmp, "init"), one_gpu,
                                             ref_file, queue), nprocs=world, join=True,
                               start_method="spawn")
        while not queue.empty():
            r = queue.get()
            work = 4 * args.heads * args.tokens * args.tokens * args.head_dim / (
                2 if r["causal"] else 1)
            sparsity = next(x["sparsity"] for x in records
                            if x["mode"] == "one-device" and x["causal"] == r["causal"])
            records.append(dict(base, impl=f"sparge-exact-{r['mode']}", world_size=world,
                                sparsity=sparsity, tops=work / r["ms"] / 1e9, **r))
    jsonl_out.emit(records, args.out)
    print(f"{'mode':>10} {'world':>5} {'causal':>6} {'ms':>9} {'speedup':>7} {'rel_l1':>9}",
          file=sys.stderr)
    for r in records:
        print(f"{r['mode']:>10} {r['world_size']:>5} {str(r['causal']):>6} {r['ms']:9.2f} "
              f"{r['speedup']:7.2f} {r['rel_l1']:9.2e}", file=sys.stderr)


if __name__ == "__main__":
    main()
