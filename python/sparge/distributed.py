"""Sequence-parallel Sparge on torch.distributed: Ulysses, ring, and the two combined.

Each rank holds a slice of the sequence (q, k, v of shape [B, H, n_rank, D], or NHD with
layout="NHD") and gets the output rows of its slice:

    import sparge.distributed as sd
    q, k, v = (sd.shard_sequence(t, dim=2) for t in (q_full, k_full, v_full))   # or your own
    out = sd.attention(q, k, v, topk=0.1)                          # Ulysses over the world
    out = sd.attention(q, k, v, ulysses_group=node, ring_group=across, is_causal=True, topk=0.1)

**Ulysses** (`ulysses_group`): an all-to-all turns sequence shards into head shards, each rank
runs `sparge.attention` on the whole sequence for H / U of the heads (Stage 1 sees every key, so
the result is that of one process, bit for bit on the CPU), and a second all-to-all brings the
rows back. Heads must divide by U; KV heads fewer than U (or not a multiple) are repeated
explicitly so that every rank gets the KV heads its query heads read. `token_grid` works (the
sequence is whole on each rank). Any shard lengths.

**Ring** (`ring_group`): each rank keeps its queries and the K/V shards travel around the ring,
the next one in flight while the current one is computed. Stage 1 predicts each rank's rows
against *all* key blocks, as one process would: every rank pools its key blocks with the
all-reduced key mean and the pooled blocks are gathered once (`KeyBlocks`, a few KB per block),
then `predict_block_mask(key_blocks=...)` gives each row's selection over the whole sequence. Each
step runs `block_sparse_attention` on (local queries, visiting keys) with the columns of the mask
that fall in the visiting shard, and the partial outputs are merged by their LSE. Causal runs use
the zig-zag layout (the sequence in 2R chunks, rank g holding chunks g and 2R - 1 - g), which
gives every rank the same work; chunk boundaries fall on query and key blocks, so all chunks but
the last are a multiple of lcm(block_q, block_k) long and each rank's mask rows are one
process's (`shard_sequence` makes that layout; `RingLayout` says it). Self-attention only (q, k
and v shards of the same tokens). With
pv_threshold = inf (λ off) the output equals one process's `block_sparse_attention` on the same
mask up to float rounding of the merge; λ decides per step against the step's running maximum,
so with λ on the skipped work differs slightly from one process's.

**Both** (`ulysses_group` and `ring_group`, e.g. Ulysses inside a node and the ring across):
Ulysses gathers the ring shard of the Ulysses group, the ring runs on it with H / U heads.
`shard_sequence` lays the sequence out for any combination.

Options are those of `sparge.attention` (per-head thresholds are sliced to each rank's heads;
`key_lengths`, each batch entry's real keys of the whole sequence, in Ulysses mode).
Not here: attn_mask, key_blocks, return_stats (use return_lse), key_lengths, windows and
token_grid in ring mode, the error target and sampled rows in ring mode (they read keys that
are on other ranks). Inference only, as the rest of Sparge.

`flash_attn_processor(**options)` is a local attention function with flash-attn's forward
signature, returning (out, lse), for yunchang / xDiT's `LongContextAttention(attn_type=None,
attn_processor=...)`: there each ring step predicts its own mask from the pair it sees.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from . import _options
from .key_blocks import KeyBlocks
from .mask import BlockMask
from .ops import _check_inputs, _from_hnd, _to_hnd, attention as _attention
from .ops import block_sparse_attention as _block_sparse_attention
from .ops import predict_block_mask as _predict_block_mask

# sparge.attention's options that may hold one value per query head.
_PER_HEAD = ("sim_threshold", "cdf_threshold", "topk", "pv_threshold")
# Options the ring's Stage 1 takes (the rest go to block_sparse_attention or are refused).
_STAGE1 = ("sim_threshold", "cdf_threshold", "topk", "attention_sink", "block_q", "block_k",
           "scale", "estimate", "backend")
_STAGE2 = ("pv_threshold", "quantized", "backend", "scale")
# Options the ring checks for their off values and then drops (self-attention aligns either way).
_RING_CHECKED = ("window_left", "window_right", "token_grid", "target_error", "causal_align",
                 "grid_offset")


def _group_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def _group_rank(group) -> int:
    return 0 if group is None else dist.get_rank(group)


# ---------------------------------------------------------------------------------------------
# The sequence layout


class RingLayout:
    """Where the ring puts a sequence of `seq_len` tokens: `chunks` chunks (ring_size, or
    2 * ring_size for causal runs: zig-zag, rank g holding chunks g and 2R - 1 - g, which gives
    every rank the same causal work), each `length` tokens, and the last one up to the end.
    `length` is a whole number of query and key blocks (a multiple of lcm(block_q, block_k)), so
    that every rank pools whole blocks of the global sequence and its query blocks are those of
    one process: the masks are then one process's, row for row."""

    def __init__(self, seq_len: int, ring_size: int, is_causal: bool,
                 block_q: int = _options.DEFAULTS["block_q"],
                 block_k: int = _options.DEFAULTS["block_k"]):
        self.seq_len, self.ring_size, self.is_causal = seq_len, ring_size, is_causal
        self.chunks = ring_size * (2 if is_causal else 1)
        unit = math.lcm(block_q, block_k)
        self.length = seq_len // self.chunks // unit * unit if self.chunks > 1 else seq_len
        if self.length < 1:
            raise ValueError(
                f"a sequence of {seq_len} tokens is too short for a ring of {ring_size} ranks: "
                f"{self.chunks} chunks of whole query and key blocks ({unit} tokens) need "
                f"{self.chunks * unit}; use fewer ring ranks, smaller blocks, or Ulysses")

    def chunks_of(self, ring_rank: int) -> Tuple[int, ...]:
        """The chunk ids a ring rank holds, in its local order."""
        if not self.is_causal:
            return (ring_rank,)
        return (ring_rank, 2 * self.ring_size - 1 - ring_rank)

    def bounds(self, chunk: int) -> Tuple[int, int]:
        """Tokens [lo, hi) of a chunk."""
        hi = self.seq_len if chunk == self.chunks - 1 else (chunk + 1) * self.length
        return chunk * self.length, hi

    def pieces(self, x: torch.Tensor, ring_rank: int, dim: int):
        """A rank's local tensor cut into its chunks: (chunk id, lo, hi, view) each."""
        at, out = 0, []
        for c in self.chunks_of(ring_rank):
            lo, hi = self.bounds(c)
            out.append((c, lo, hi, x.narrow(dim, at, hi - lo)))
            at += hi - lo
        return out

    def tokens_of(self, ring_rank: int) -> int:
        return sum(hi - lo for lo, hi in map(self.bounds, self.chunks_of(ring_rank)))


def shard_sequence(x: torch.Tensor, dim: int = 2, *, ulysses_group=None, ring_group=None,
                   is_causal: bool = False, block_q: int = _options.DEFAULTS["block_q"],
                   block_k: int = _options.DEFAULTS["block_k"],
                   rank: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """This rank's slice of a whole sequence `x` (its tokens along `dim`: 2 for HND, 1 for NHD)
    in the layout `attention` expects for these groups: the ring's chunks (zig-zag when causal)
    for this rank's ring position, split evenly among the Ulysses group in rank order. With no
    group given, the world is the Ulysses group. `rank` = (ulysses_rank, ring_rank) overrides
    the ranks (to lay out the shards of other ranks, e.g. in a test); the group sizes still come
    from the groups."""
    ulysses_group = _default_ulysses(ulysses_group, ring_group)
    u_size, r_size = _group_size(ulysses_group), _group_size(ring_group)
    u_rank, r_rank = rank if rank is not None else (_group_rank(ulysses_group),
                                                    _group_rank(ring_group))
    if r_size > 1:
        layout = RingLayout(x.shape[dim], r_size, is_causal, block_q, block_k)
        x = torch.cat([x.narrow(dim, lo, hi - lo) for lo, hi in
                       map(layout.bounds, layout.chunks_of(r_rank))], dim=dim)
    return torch.tensor_split(x, u_size, dim=dim)[u_rank].contiguous()


def gather_sequence(x: torch.Tensor, dim: int = 2, *, ulysses_group=None, ring_group=None,
                    is_causal: bool = False, block_q: int = _options.DEFAULTS["block_q"],
                    block_k: int = _options.DEFAULTS["block_k"]) -> torch.Tensor:
    """The inverse of `shard_sequence`: every rank gets the whole sequence (an all-gather;
    for checks and small tensors, not for the hot path)."""
    ulysses_group = _default_ulysses(ulysses_group, ring_group)
    world = dist.get_world_size()
    lengths = _all_lengths(x.shape[dim], None, x.device)
    # all_gather takes equal sizes: every piece padded to the longest
    longest = max(lengths)
    pad = x.new_zeros(x.shape[:dim] + (longest,) + x.shape[dim + 1:])
    pad.narrow(dim, 0, x.shape[dim]).copy_(x)
    pieces = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(pieces, pad)
    pieces = [p.narrow(dim, 0, n) for p, n in zip(pieces, lengths)]
    mine = torch.tensor([_group_rank(ulysses_group), _group_rank(ring_group)], device=x.device)
    table = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(table, mine)
    ranks = [(int(t[0]), int(t[1])) for t in table]
    u_size, r_size = _group_size(ulysses_group), _group_size(ring_group)
    # Ulysses pieces of each ring position, in Ulysses rank order.
    ring_parts = []
    for g in range(r_size):
        mine = sorted((u, r) for r, (u, rg) in enumerate(ranks) if rg == g)
        if len(mine) != u_size:
            raise ValueError("the groups do not cover the world as a Ulysses x ring grid")
        ring_parts.append(torch.cat([pieces[r] for _, r in mine], dim=dim))
    if r_size == 1:
        return ring_parts[0]
    layout = RingLayout(sum(p.shape[dim] for p in ring_parts), r_size, is_causal, block_q,
                        block_k)
    chunks = {c: view for g, part in enumerate(ring_parts)
              for c, _, _, view in layout.pieces(part, g, dim)}
    return torch.cat([chunks[c] for c in sorted(chunks)], dim=dim)


def _default_ulysses(ulysses_group, ring_group):
    """With no group given, the world is the Ulysses group."""
    if ulysses_group is None and ring_group is None:
        return dist.group.WORLD
    return ulysses_group


def _all_lengths(n: int, group, device) -> List[int]:
    """Every rank's local length in `group` (one small all-gather, on `device`: NCCL takes
    CUDA tensors only)."""
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    size = dist.get_world_size(group) if group is not None else dist.get_world_size()
    out = [torch.zeros_like(mine) for _ in range(size)]
    dist.all_gather(out, mine, group=group)
    return [int(t) for t in out]


# ---------------------------------------------------------------------------------------------
# Ulysses


def _all_to_all_heads(x: torch.Tensor, lengths: Sequence[int], group) -> torch.Tensor:
    """[B, H, n_mine, D] sequence shard -> [B, H / U, sum(lengths), D] head shard: rank j gets
    heads [j H / U, (j + 1) H / U) of every rank's tokens, concatenated in rank order."""
    size = len(lengths)
    b, h, n, d = x.shape
    send = x.reshape(b, size, h // size, n, d).transpose(0, 1).contiguous()
    recv = x.new_empty(sum(lengths) * b * (h // size) * d)
    per_token = b * (h // size) * d
    dist.all_to_all_single(recv, send.reshape(-1), [per_token * m for m in lengths],
                           [per_token * n] * size, group=group)
    parts = torch.split(recv, [per_token * m for m in lengths])
    return torch.cat([p.reshape(b, h // size, m, d) for p, m in zip(parts, lengths)], dim=2)


def _all_to_all_qkv(q, k, v, lengths, group):
    """q, k, v to head shards in one all-to-all when they share a dtype: each rank's slice of
    the three is packed side by side along the heads, sent as one, and split on arrival."""
    if not (q.dtype == k.dtype == v.dtype):
        return tuple(_all_to_all_heads(t.contiguous(), lengths, group) for t in (q, k, v))
    size = len(lengths)
    b, _, n, d = q.shape
    heads = [t.shape[1] // size for t in (q, k, v)]  # each rank's share of each
    packed = torch.cat([t.reshape(b, size, share, n, d) for t, share in zip((q, k, v), heads)],
                       dim=2).reshape(b, size * sum(heads), n, d)
    return torch.split(_all_to_all_heads(packed, lengths, group), heads, dim=1)


def _all_to_all_tokens(x: torch.Tensor, lengths: Sequence[int], rank: int,
                       group) -> torch.Tensor:
    """The inverse: [B, H / U, sum(lengths), D] -> [B, H, lengths[rank], D]."""
    size = len(lengths)
    b, hl, _, d = x.shape
    n = lengths[rank]
    send = torch.cat([p.reshape(-1) for p in torch.split(x, list(lengths), dim=2)])
    recv = x.new_empty(size * b * hl * n * d)
    per_token = b * hl * d
    dist.all_to_all_single(recv, send, [per_token * n] * size,
                           [per_token * m for m in lengths], group=group)
    return recv.reshape(size, b, hl, n, d).transpose(0, 1).reshape(b, size * hl, n, d)


def _expand_kv_heads(k: torch.Tensor, heads_q: int, size: int) -> torch.Tensor:
    """KV heads repeated so that they divide among `size` ranks with each rank's query heads:
    each KV head r = size / gcd(Hkv, size) times (the query heads' group divides by r whenever
    Hq divides by size)."""
    heads_kv = k.shape[1]
    if heads_kv % size == 0:
        return k
    repeat = size // math.gcd(heads_kv, size)
    if (heads_q // heads_kv) % repeat != 0:  # cannot happen when heads_q % size == 0
        raise ValueError(f"{heads_kv} KV heads do not spread over {size} ranks with {heads_q} "
                         "query heads")
    return k.repeat_interleave(repeat, dim=1)


def _slice_heads(options: dict, heads_q: int, first: int, count: int) -> dict:
    """Per-head thresholds cut to query heads [first, first + count)."""
    out = dict(options)
    for name in _PER_HEAD:
        value = out.get(name)
        if isinstance(value, (list, tuple)):
            value = torch.tensor(value, dtype=torch.float32)
        if isinstance(value, torch.Tensor) and value.dim() == 1:
            if value.numel() != heads_q:
                raise ValueError(f"{name} has {value.numel()} values, one per query head "
                                 f"({heads_q}) expected")
            out[name] = value[first:first + count]
    return out


def _ulysses(q, k, v, group, local_fn, options, return_lse):
    """q, k, v: HND sequence shards. Runs local_fn(q, k, v, options) -> (out, lse or None) on
    the head shards and returns this rank's rows."""
    size, rank = _group_size(group), _group_rank(group)
    heads_q = q.shape[1]
    if heads_q % size != 0:
        raise ValueError(f"Ulysses over {size} ranks needs the query heads ({heads_q}) to divide "
                         "by the group size; use a ring for the rest")
    lengths = _all_lengths(q.shape[2], group, q.device)
    if k.shape[2] != q.shape[2] or v.shape[2] != q.shape[2]:
        raise ValueError(f"q, k and v shards must hold the same tokens (self-attention), got "
                         f"{q.shape[2]}, {k.shape[2]} and {v.shape[2]}")
    k, v = (_expand_kv_heads(t, heads_q, size) for t in (k, v))
    qh, kh, vh = _all_to_all_qkv(q, k, v, lengths, group)
    local = _slice_heads(options, heads_q, rank * (heads_q // size), heads_q // size)
    out, lse = local_fn(qh, kh, vh, local)
    out = _all_to_all_tokens(out.contiguous(), lengths, rank, group)
    if not return_lse:
        return out, None
    lse = _all_to_all_tokens(lse.unsqueeze(-1).contiguous(), lengths, rank, group)
    return out, lse.squeeze(-1)


def _local_attention(q, k, v, options, return_lse):
    if not return_lse:
        return _attention(q, k, v, **options), None
    out, stats = _attention(q, k, v, return_stats=True, **options)
    return out, stats.lse


# ---------------------------------------------------------------------------------------------
# Ring


def _merge(acc, block):
    """Merge two partial attentions over disjoint keys by their natural-log LSE: (out fp32,
    lse) pairs; rows that saw no key yet (lse -inf) take the other side whole; NaN stays."""
    if acc is None:
        return block[0].float(), block[1]
    (out, lse), (out2, lse2) = acc, block
    new = torch.logaddexp(lse, lse2)
    empty = torch.isneginf(new)
    w1 = torch.where(empty, 0.0, torch.exp(lse - new)).unsqueeze(-1)
    w2 = torch.where(empty, 0.0, torch.exp(lse2 - new)).unsqueeze(-1)
    return out * w1 + out2.float() * w2, new


def _column_slice(mask: BlockMask, lo_block: int, hi_block: int, seq_k: int,
                  is_causal: bool) -> BlockMask:
    """The tiles of a padded mask whose key block is in [lo_block, hi_block), renumbered from 0,
    as a padded mask over seq_k keys. A row's kept blocks ascend, so its part is one run that
    starts after the blocks before lo_block; slots past a row's count are clamped, unread."""
    blocks = mask.indices.to(torch.int64)
    width = hi_block - lo_block
    listed = torch.arange(blocks.shape[-1], device=blocks.device) < mask.counts.unsqueeze(-1)
    before = ((blocks < lo_block) & listed).sum(-1)
    inside = ((blocks >= lo_block) & (blocks < hi_block) & listed).sum(-1)
    take = (before.unsqueeze(-1) + torch.arange(width, device=blocks.device)).clamp_(
        max=blocks.shape[-1] - 1)
    part = (torch.gather(blocks, -1, take) - lo_block).clamp_(0, width - 1)
    return BlockMask(inside.to(torch.int32), part.to(torch.int32).contiguous(), seq_q=mask.seq_q,
                     seq_k=seq_k, block_q=mask.block_q, block_k=mask.block_k,
                     is_causal=is_causal, causal_align="top_left")


class _RingComm:
    """K/V shards passed to the next rank while the current one is used (isend / irecv)."""

    def __init__(self, group):
        self.group = group
        self.size, self.rank = _group_size(group), _group_rank(group)
        self.next = dist.get_global_rank(group, (self.rank + 1) % self.size)
        self.prev = dist.get_global_rank(group, (self.rank - 1) % self.size)
        self.pending = []

    def start(self, send: torch.Tensor, recv: torch.Tensor):
        ops = [dist.P2POp(dist.isend, send, self.next, self.group),
               dist.P2POp(dist.irecv, recv, self.prev, self.group)]
        self.pending = dist.batch_isend_irecv(ops)

    def wait(self):
        for work in self.pending:
            work.wait()
        self.pending = []


def _ring(q, k, v, group, is_causal, options, return_lse):
    """q, k, v: HND shards in the ring layout (RingLayout). Returns (out, lse or None)."""
    size, rank = _group_size(group), _group_rank(group)
    block_q = options.get("block_q", _options.DEFAULTS["block_q"])
    block_k = options.get("block_k", _options.DEFAULTS["block_k"])
    for name in ("window_left", "window_right"):
        if options.get(name, -1) >= 0:
            raise ValueError(f"{name}: windows are not supported in ring mode (the chunks' "
                             "positions would need a query offset); use Ulysses")
    for name in ("token_grid", "target_error"):
        if options.get(name):
            raise ValueError(f"{name} is not supported in ring mode; use Ulysses")
    # ("auto" is pooled here: the ring's Stage 1 takes the key side from gathered key blocks.)
    if options.get("estimate", "pooled") == "sampled_rows":
        raise ValueError("estimate='sampled_rows' reads keys on other ranks: the ring takes "
                         "the pooled estimate only; use Ulysses")
    # Every other option must be one the ring passes on, so that none is dropped silently.
    unknown = sorted(set(options) - set(_STAGE1) - set(_STAGE2) - set(_RING_CHECKED))
    if unknown:
        raise TypeError(f"{unknown[0]} is not an option the ring takes (it runs the pooled "
                        f"Stage 1 and block_sparse_attention: {sorted(set(_STAGE1 + _STAGE2))})")
    if k.shape[2] != q.shape[2] or v.shape[2] != q.shape[2]:
        raise ValueError(f"q, k and v shards must hold the same tokens (self-attention), got "
                         f"{q.shape[2]}, {k.shape[2]} and {v.shape[2]}")
    lengths = _all_lengths(q.shape[2], group, q.device)
    seq_len = sum(lengths)
    layout = RingLayout(seq_len, size, is_causal, block_q, block_k)
    for g in range(size):
        if lengths[g] != layout.tokens_of(g):
            raise ValueError(
                f"ring rank {g} holds {lengths[g]} tokens, the {'zig-zag ' if is_causal else ''}"
                f"ring layout of {seq_len} tokens gives it {layout.tokens_of(g)} (chunks of "
                f"{layout.length}); lay the sequence out with sparge.distributed.shard_sequence")

    # Stage 1's key side over the whole sequence: the all-reduced mean, each rank's blocks
    # pooled with it, gathered once (padded to the most blocks a rank holds: the last chunk,
    # which runs to the end, may hold more).
    mean = k.double().sum(dim=2)
    dist.all_reduce(mean, group=group)
    mean /= seq_len
    b, heads_kv, _, d = k.shape
    f64 = dict(dtype=torch.float64, device=k.device)
    blocks_of = {c: -(-(hi - lo) // block_k) for c in range(layout.chunks)
                 for lo, hi in [layout.bounds(c)]}
    per_rank = max(sum(blocks_of[c] for c in layout.chunks_of(g)) for g in range(size))
    pooled_send = torch.zeros((b, heads_kv, d, per_rank), **f64)
    sim_send = torch.zeros((b, heads_kv, per_rank), **f64)
    at = 0
    for c, _, _, kc in layout.pieces(k, rank, 2):
        kb = KeyBlocks.build(kc, block_k=block_k, mean=mean)
        pooled_send[..., at:at + blocks_of[c]] = kb.pooled
        sim_send[..., at:at + blocks_of[c]] = kb.sim
        at += blocks_of[c]
    pooled_all = [torch.empty_like(pooled_send) for _ in range(size)]
    sim_all = [torch.empty_like(sim_send) for _ in range(size)]
    dist.all_gather(pooled_all, pooled_send, group=group)
    dist.all_gather(sim_all, sim_send, group=group)
    total_blocks = -(-seq_len // block_k)
    pooled = torch.empty((b, heads_kv, d, total_blocks), **f64)
    sim = torch.empty((b, heads_kv, total_blocks), **f64)
    for g in range(size):
        at = 0
        for c in layout.chunks_of(g):
            first = layout.bounds(c)[0] // block_k
            pooled[..., first:first + blocks_of[c]] = pooled_all[g][..., at:at + blocks_of[c]]
            sim[..., first:first + blocks_of[c]] = sim_all[g][..., at:at + blocks_of[c]]
            at += blocks_of[c]

    # The first K/V shard starts travelling now, while Stage 1 predicts (no collective runs
    # while a transfer is in flight, so every rank issues the same order of operations).
    comm = _RingComm(group) if size > 1 else None
    kv = torch.stack([k, v]).contiguous()

    def start(step):
        if step + 1 >= size:
            return None
        nxt = kv.new_empty((2, b, heads_kv, lengths[(rank - step - 1) % size], d))
        comm.start(kv, nxt)
        return nxt

    nxt = start(0)
    stage1 = {n: options[n] for n in _STAGE1 if n in options}
    stage2 = {n: options[n] for n in _STAGE2 if n in options}
    queries = layout.pieces(q, rank, 2)
    masks = {}
    for c, lo, hi, qc in queries:
        # Causal: chunk c's rows see keys [0, hi), the diagonal at the end (bottom_right).
        keys = hi if is_causal else seq_len
        kb = KeyBlocks.from_tensors(pooled, sim, mean, tokens=keys, block_k=block_k)
        masks[c] = _predict_block_mask(qc, None, key_blocks=kb, is_causal=is_causal,
                                       causal_align="bottom_right", **stage1)

    acc = {c: None for c, _, _, _ in queries}
    for step in range(size):
        holder = (rank - step) % size
        if step > 0:  # the next holder's shard travels while this one is computed
            nxt = start(step)
        for c, _, _, qc in queries:
            for c2, lo2, hi2, kvc in layout.pieces(kv, holder, 3):
                if is_causal and c2 > c:
                    continue  # every key of chunk c2 comes after every query of chunk c
                sub = _column_slice(masks[c], lo2 // block_k, -(-hi2 // block_k), hi2 - lo2,
                                    is_causal and c2 == c)
                out, stats = _block_sparse_attention(qc, kvc[0], kvc[1], sub,
                                                     return_stats=True, **stage2)
                acc[c] = _merge(acc[c], (out, stats.lse))
        if nxt is not None:
            comm.wait()
            kv = nxt
    outs = [acc[c][0] for c, _, _, _ in queries]
    out = torch.cat(outs, dim=2).to(q.dtype)
    lse = torch.cat([acc[c][1] for c, _, _, _ in queries], dim=2) if return_lse else None
    return out, lse


# ---------------------------------------------------------------------------------------------
# The entry point


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, ulysses_group=None,
              ring_group=None, is_causal: bool = False, layout: str = "HND",
              return_lse: bool = False, **options):
    """Sequence-parallel `sparge.attention` (module docstring). q, k, v: this rank's shard of
    the sequence, laid out as `shard_sequence` does for the same groups; returns this rank's
    output rows (and, with return_lse, their natural-log LSE [B, H, n]). With neither group
    given, Ulysses over the default (world) group."""
    for name in ("attn_mask", "key_blocks", "return_stats"):
        if options.get(name) not in (None, False):
            raise ValueError(f"{name} is not supported by sparge.distributed.attention")
        options.pop(name, None)
    _check_inputs(q, k, v, layout)
    ulysses_group = _default_ulysses(ulysses_group, ring_group)
    if options.get("key_lengths") is None:
        options.pop("key_lengths", None)
    elif _group_size(ring_group) > 1:
        raise ValueError("key_lengths are not supported in ring mode (a padding suffix of the "
                         "whole sequence would cut the ring's last chunks); use Ulysses")
    qh, kh, vh = _to_hnd(q, layout), _to_hnd(k, layout), _to_hnd(v, layout)
    options["scale"] = _options.resolve_scale(options.get("scale"), qh.shape[-1])
    ring = _group_size(ring_group) > 1
    if ring and options.get("token_grid") is not None:
        raise ValueError("token_grid is not supported in ring mode: the Hilbert order spans "
                         "the whole sequence; reorder the tokens before sharding, or use "
                         "Ulysses alone")

    def local(qq, kk, vv, opts):
        if ring:
            return _ring(qq, kk, vv, ring_group, is_causal, opts, return_lse)
        return _local_attention(qq, kk, vv, dict(opts, is_causal=is_causal), return_lse)

    if _group_size(ulysses_group) > 1:
        out, lse = _ulysses(qh, kh, vh, ulysses_group, local, options, return_lse)
    else:
        out, lse = local(qh, kh, vh, options)
    out = _from_hnd(out, layout)
    return (out, lse) if return_lse else out


def flash_attn_processor(**options):
    """A local attention function with flash-attn's forward signature for yunchang / xDiT:
    fn(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), ...)
    on [B, N, H, D] tensors, returning (out [B, N, H, D], lse [B, H, N] float32, natural log),
    Sparge with `options` (both stages on the pair it is given). Causality aligns bottom-right,
    as flash-attn's.

        attn = yunchang.LongContextAttention(ring_impl_type="basic", attn_type=None,
                                             attn_processor=sparge.distributed
                                             .flash_attn_processor(topk=0.1))

    yunchang calls the processor when attn_type matches none of its own kernels (None). In
    its ring each step predicts its own mask from (local queries, visiting keys): a selection
    per shard pair, not per whole row as `sparge.distributed.attention`'s ring."""
    def fn(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
           softcap=0.0, alibi_slopes=None, deterministic=False, return_softmax=False,
           return_attn_probs=False, **unused):
        if dropout_p:
            raise ValueError("dropout_p > 0: Sparge is inference-only")
        if softcap:
            raise ValueError("softcap is not supported by Sparge")
        if alibi_slopes is not None:
            raise ValueError("alibi_slopes are not supported by Sparge")
        out, stats = _attention(q, k, v, layout="NHD", is_causal=causal,
                                causal_align="bottom_right", scale=softmax_scale,
                                window_left=int(window_size[0]),
                                window_right=int(window_size[1]), return_stats=True,
                                **options)
        return out, stats.lse
    return fn
