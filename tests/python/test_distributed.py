"""sparge.distributed on CPU processes with torch.distributed's gloo backend (2 and 4 ranks):
Ulysses, ring and the hybrid against one process's Sparge on the whole sequence.

Each case runs in every rank: the rank builds the whole inputs from a seed, computes the
one-process result, takes its shard with shard_sequence, runs the distributed call and compares
its rows (and LSE). A rank's failure is raised in the parent with its traceback."""
import os
import tempfile
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sparge
import sparge.distributed as sd
from sparge import _C

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

INF = float("inf")


def _inputs(seed, heads_q, heads_kv, seq, head_dim=32, kind="random"):
    if kind == "video":  # 256 tokens of a (2, 8, 16) grid
        w = sparge.workloads.video_grid(heads=heads_q, grid=(2, 8, 16), head_dim=head_dim,
                                        seed=seed)
        return w.q, w.k, w.v
    if kind == "language":  # causal LM-like heads: sinks, local windows, retrieval
        w = sparge.workloads.language_like(heads_q=heads_q, heads_kv=heads_kv, tokens=seq,
                                           head_dim=head_dim, seed=seed)
        return w.q, w.k, w.v
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn((1, heads_q, seq, head_dim), generator=gen)
    k = torch.randn((1, heads_kv, seq, head_dim), generator=gen)
    v = torch.randn((1, heads_kv, seq, head_dim), generator=gen)
    return q, k, v


def _rel_l1(a, b):
    return float((a.double() - b.double()).abs().sum() / b.double().abs().sum())


def _groups(world, ulysses):
    """Ulysses groups of `ulysses` consecutive ranks and ring groups across them (every rank
    creates every group, as torch.distributed requires)."""
    rings = world // ulysses
    u_groups = [dist.new_group(list(range(g * ulysses, (g + 1) * ulysses)))
                for g in range(rings)]
    r_groups = [dist.new_group(list(range(u, world, ulysses))) for u in range(ulysses)]
    rank = dist.get_rank()
    return u_groups[rank // ulysses], r_groups[rank % ulysses]


def _check_ulysses(rank, world):
    """Ulysses equals one process bit for bit: GQA with fewer KV heads than ranks, per-head
    thresholds, an odd length, causal, a token grid, the LSE."""
    cases = [
        dict(heads_q=4, heads_kv=1, seq=333, opts=dict(topk=torch.tensor([0.2, 0.5, 0.3, 1.0]),
                                                       sim_threshold=-1.0)),
        dict(heads_q=4, heads_kv=2, seq=517, opts=dict(cdf_threshold=0.9, pv_threshold=8.0),
             causal=True),
        dict(heads_q=4, heads_kv=4, kind="video", opts=dict(topk=0.3, sim_threshold=0.5,
                                                            token_grid=(2, 8, 16))),
    ]
    # A padded batch: key_lengths (each entry's real keys of the whole sequence) pass through.
    gen = torch.Generator().manual_seed(19)
    q, k, v = (torch.randn((2, h, 300, 32), generator=gen) for h in (4, 2, 2))
    lengths = torch.tensor([300, 211], dtype=torch.int32)
    opts = dict(topk=0.4, sim_threshold=-1.0)
    want = sparge.attention(q, k, v, key_lengths=lengths, **opts)
    got = sd.attention(*(sd.shard_sequence(t) for t in (q, k, v)), key_lengths=lengths, **opts)
    assert torch.equal(got, sd.shard_sequence(want)), "ulysses key_lengths: output differs"
    for i, c in enumerate(cases):
        q, k, v = _inputs(10 + i, c["heads_q"], c["heads_kv"], c.get("seq", 0),
                          kind=c.get("kind", "random"))
        causal = c.get("causal", False)
        want, stats = sparge.attention(q, k, v, is_causal=causal, return_stats=True, **c["opts"])
        shard = [sd.shard_sequence(t) for t in (q, k, v)]
        got, lse = sd.attention(*shard, is_causal=causal, return_lse=True, **c["opts"])
        assert torch.equal(got, sd.shard_sequence(want)), f"ulysses case {i}: output differs"
        assert torch.equal(lse, sd.shard_sequence(stats.lse)), f"ulysses case {i}: lse differs"
        # NHD layout, no LSE
        got_nhd = sd.attention(*(t.transpose(1, 2) for t in shard), is_causal=causal,
                               layout="NHD", **c["opts"])
        assert torch.equal(got_nhd.transpose(1, 2), got), f"ulysses case {i}: NHD differs"


def _ring_reference(q, k, v, causal, opts, stage1_opts):
    """One process: Stage 1 on the whole sequence, then block_sparse_attention on that mask.
    The ring's Stage 1 takes the pooled map (its key side comes from gathered key blocks; the
    default estimate, auto, is pooled there), so the reference takes it too."""
    mask = sparge.predict_block_mask(q, k, is_causal=causal,
                                     **dict(dict(estimate="pooled"), **stage1_opts))
    out, stats = sparge.block_sparse_attention(q, k, v, mask, return_stats=True,
                                               pv_threshold=opts.get("pv_threshold", INF))
    return mask, out, stats.lse


def _check_ring(rank, world, ulysses, ring_group, ulysses_group):
    """The ring (and the hybrid) against one process on the same mask, within float rounding
    of the LSE merge; the masks themselves equal one process's prediction (gathered rows)."""
    cases = [
        dict(heads_q=4, heads_kv=2, seq=1000, causal=False,
             stage1=dict(topk=0.3, sim_threshold=-1.0)),
        dict(heads_q=4, heads_kv=2, seq=1000, causal=True, kind="language",
             stage1=dict(cdf_threshold=0.9, sim_threshold=0.3)),
        dict(heads_q=4, heads_kv=4, seq=777, causal=True,
             stage1=dict(topk=torch.tensor([0.1, 0.4, 0.2, 0.6]), sim_threshold=-1.0)),
        dict(heads_q=4, heads_kv=4, kind="video", causal=False,
             stage1=dict(topk=0.2, sim_threshold=0.6)),
    ]
    groups = dict(ulysses_group=ulysses_group, ring_group=ring_group)
    for i, c in enumerate(cases):
        q, k, v = _inputs(20 + i, c["heads_q"], c["heads_kv"], c.get("seq", 0),
                          kind=c.get("kind", "random"))
        causal = c["causal"]
        opts = dict(c["stage1"], pv_threshold=INF, block_q=64, block_k=32)
        s1 = dict(c["stage1"], block_q=64, block_k=32)
        mask, want, want_lse = _ring_reference(q, k, v, causal, opts, s1)
        lay = dict(is_causal=causal, block_q=64, block_k=32, **groups)  # the ring's layout
        shard = [sd.shard_sequence(t, **lay) for t in (q, k, v)]
        got, lse = sd.attention(*shard, is_causal=causal, return_lse=True, **groups, **opts)
        mine = sd.shard_sequence(want, **lay)
        err = _rel_l1(got, mine)
        assert not torch.isnan(got).any(), f"ring case {i}: NaN"
        assert err < 1e-6, f"ring case {i}: rel L1 {err:.3g} vs one process"
        lse_want = sd.shard_sequence(want_lse, **lay)
        assert torch.allclose(lse, lse_want, rtol=1e-5, atol=1e-5), f"ring case {i}: lse"
        # The whole output gathered back equals one process's.
        whole = sd.gather_sequence(got, **lay)
        assert _rel_l1(whole, want) < 1e-6, f"ring case {i}: gathered output"
        # Nothing skipped: dense attention (SDPA) within float32 rounding.
        dense = dict(pv_threshold=INF, block_q=64, block_k=32, topk=1.0, sim_threshold=-1.0)
        got = sd.attention(*shard, is_causal=causal, **groups, **dense)
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(q.shape[1] // k.shape[1], 1),
            v.repeat_interleave(q.shape[1] // k.shape[1], 1), is_causal=causal)
        err = _rel_l1(got, sd.shard_sequence(sdpa, **lay))
        assert err < 1e-5, f"ring case {i}: dense rel L1 {err:.3g} vs SDPA"
    # Batch 2, bfloat16, the NHD layout: one process on the same mask within bf16 rounding
    # (each partial output is rounded to bf16 before the merge).
    gen = torch.Generator().manual_seed(42)
    q, k, v = (torch.randn((2, h, 600, 32), generator=gen).to(torch.bfloat16) for h in (4, 2, 2))
    opts = dict(topk=0.3, sim_threshold=-1.0, pv_threshold=INF, block_q=64, block_k=32)
    s1 = dict(topk=0.3, sim_threshold=-1.0, block_q=64, block_k=32)
    _, want, _ = _ring_reference(q, k, v, True, opts, s1)
    lay = dict(is_causal=True, block_q=64, block_k=32, **groups)
    shard = [sd.shard_sequence(t.transpose(1, 2), dim=1, **lay) for t in (q, k, v)]
    got = sd.attention(*shard, layout="NHD", is_causal=True, **groups, **opts)
    assert got.dtype == torch.bfloat16 and got.shape == shard[0].shape
    err = _rel_l1(got, sd.shard_sequence(want.transpose(1, 2), dim=1, **lay))
    assert err < 1e-2, f"ring bf16 NHD batch 2: rel L1 {err:.3g}"
    # NaN in a query row propagates as in one process (that row's output), nowhere else.
    q, k, v = _inputs(41, 4, 4, 700)
    q[0, 1, 300] = float("nan")
    opts = dict(topk=0.5, sim_threshold=-1.0, pv_threshold=INF, block_q=64, block_k=32)
    s1 = dict(topk=0.5, sim_threshold=-1.0, block_q=64, block_k=32)
    _, want, _ = _ring_reference(q, k, v, False, opts, s1)
    lay = dict(block_q=64, block_k=32, **groups)
    got = sd.attention(*[sd.shard_sequence(t, **lay) for t in (q, k, v)], **groups, **opts)
    mine = sd.shard_sequence(want, **lay)
    assert torch.equal(torch.isnan(got), torch.isnan(mine)), "ring: NaN rows differ"
    assert torch.isnan(sd.gather_sequence(got, **lay)).any(), "ring: the NaN row was lost"
    finite = ~torch.isnan(mine)
    assert _rel_l1(got[finite], mine[finite]) < 1e-6, "ring: rows without NaN"
    # λ on: the skipped work differs per step, the error stays that of λ.
    q, k, v = _inputs(40, 4, 4, 900)
    opts = dict(topk=0.5, sim_threshold=-1.0, pv_threshold=4.0, block_q=64, block_k=32)
    shard = [sd.shard_sequence(t, block_q=64, block_k=32, **groups) for t in (q, k, v)]
    got = sd.attention(*shard, **groups, **opts)
    one = sparge.attention(q, k, v, estimate="pooled", **opts)  # the ring's Stage 1
    err = _rel_l1(got, sd.shard_sequence(one, block_q=64, block_k=32, **groups))
    assert err < 0.05, f"ring with lambda: rel L1 {err:.3g} vs one process"


def _check_errors(rank, world):
    q, k, v = _inputs(50, 3, 3, 64)
    with pytest.raises(ValueError, match="heads"):
        sd.attention(*(sd.shard_sequence(t) for t in (q, k, v)))
    q, k, v = _inputs(51, 4, 4, 600)
    shard = [sd.shard_sequence(t) for t in (q, k, v)]
    with pytest.raises(ValueError, match="ring layout"):  # contiguous shards, causal ring
        sd.attention(*[sd.shard_sequence(t, ring_group=dist.group.WORLD, block_q=64, block_k=32)
                       for t in (q, k, v)],
                     ring_group=dist.group.WORLD, is_causal=True, topk=0.5, block_q=64,
                     block_k=32)
    with pytest.raises(ValueError, match="window_left"):
        sd.attention(*shard, ring_group=dist.group.WORLD, window_left=16, topk=0.5)
    with pytest.raises(ValueError, match="attn_mask"):
        sd.attention(*shard, attn_mask=torch.ones(1, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_lengths"):
        sd.attention(*shard, ring_group=dist.group.WORLD, key_lengths=torch.tensor([100]))
    with pytest.raises(ValueError, match="too short"):
        sd.RingLayout(100, 4, True, 64, 64)


def _worker(rank, world, init_file, scenario, errors):
    try:
        torch.set_num_threads(1)
        _C._set_poison_outputs(True)  # every output element must be written
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world)
        with torch.no_grad():
            if scenario == "ulysses":
                _check_ulysses(rank, world)
                _check_errors(rank, world)
            elif scenario == "ring":
                _check_ring(rank, world, 1, dist.group.WORLD, None)
            elif scenario == "hybrid":
                ulysses_group, ring_group = _groups(world, 2)
                _check_ring(rank, world, 2, ring_group, ulysses_group)
            elif scenario == "yunchang":
                _check_yunchang(rank, world)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        errors.put((rank, traceback.format_exc()))
        raise


def _run(world, scenario):
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_worker, args=(r, world, init_file, scenario, errors))
                 for r in range(world)]
        for p in procs:
            p.start()
        # One deadline for all ranks: a rank that dies leaves the others blocked in a collective
        # until gloo notices, so a failing case must not wait the timeout once per rank.
        deadline = time.monotonic() + 300
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, "\n".join(f"rank {r}:\n{tb}" for r, tb in failures)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


@pytest.mark.parametrize("world", [2, 4])
def test_ulysses_equals_one_process(world):
    _run(world, "ulysses")


@pytest.mark.parametrize("world", [2, 4])
def test_ring_equals_one_process_on_the_same_mask(world):
    _run(world, "ring")


def test_hybrid_ulysses_in_groups_ring_across():
    _run(4, "hybrid")


def _check_yunchang(rank, world):
    import yunchang
    from yunchang import LongContextAttention, set_seq_parallel_pg
    set_seq_parallel_pg(2, world // 2, rank, world)
    q, k, v = _inputs(60, 4, 4, 512)
    opts = dict(topk=0.3, sim_threshold=-1.0)
    attn = LongContextAttention(ring_impl_type="basic", attn_type=None,
                                attn_processor=sd.flash_attn_processor(**opts))
    # yunchang's layout: [B, N, H, D], sequence split evenly in rank order (Ulysses x ring).
    nhd = [t.transpose(1, 2) for t in (q, k, v)]
    shard = [torch.tensor_split(t, world, dim=1)[rank].contiguous() for t in nhd]
    got = attn(*shard, softmax_scale=q.shape[-1] ** -0.5)
    if world == 2:  # Ulysses only: each rank runs Sparge on the whole sequence for its heads
        want = sparge.attention(q, k, v, **opts).transpose(1, 2)
        assert torch.equal(got, torch.tensor_split(want, world, dim=1)[rank]), "yunchang ulysses"
    else:  # with its ring: a mask per shard pair; dense settings must equal SDPA
        dense = LongContextAttention(ring_impl_type="basic", attn_type=None,
                                     attn_processor=sd.flash_attn_processor(topk=1.0,
                                                                            sim_threshold=-1.0))
        got = dense(*shard, softmax_scale=q.shape[-1] ** -0.5)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        err = _rel_l1(got, torch.tensor_split(sdpa, world, dim=1)[rank])
        assert err < 1e-5, f"yunchang ring dense: rel L1 {err:.3g}"
    del yunchang


@pytest.mark.parametrize("world", [2, 4])
def test_yunchang_long_context_attention_with_sparge(world):
    pytest.importorskip("yunchang", reason="yunchang is not installed")
    _run(world, "yunchang")


def test_the_gpu_benchmark_runs_on_cpu_processes():
    """bench/gpu/bench_distributed.py --device cpu --tiny: the multi-GPU benchmark's code path on
    gloo (so that a device run does not find its bugs), every mode's output equal to one
    process's within float rounding."""
    import json
    import pathlib
    import subprocess
    import sys
    script = pathlib.Path(__file__).resolve().parents[2] / "bench" / "gpu" / "bench_distributed.py"
    run = subprocess.run([sys.executable, str(script), "--device", "cpu", "--tiny", "--world",
                          "2"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    modes = {(r["mode"], r["causal"]) for r in records}
    assert modes == {(m, c) for m in ("one-device", "ulysses", "ring") for c in (False, True)}
    for r in records:
        assert r["rel_l1"] < 1e-6 and r["ms"] > 0 and 0 < r["sparsity"] < 1, r
