"""Fake (meta) kernels of the sparge ops: output shapes, dtypes and strides without running
anything, so torch.compile and FakeTensor tracing see the ops as ordinary graph nodes.

They mirror python/csrc/binding.cc: the output is allocated like q (empty_like keeps an NHD
view's strides), lse, the P·V counters, Stage 1's stats and attention's mask are empty unless
`with_extras`. The options arrive as
the ops' keyword arguments (options left out take the C++ defaults).
"""
import torch

from ._options import DEFAULTS


def _mask(q, k, options):
    block_q = options.get("block_q", DEFAULTS["block_q"])
    block_k = options.get("block_k", DEFAULTS["block_k"])
    num_q = -(-q.shape[2] // block_q)
    num_k = -(-k.shape[2] // block_k)
    counts = q.new_empty((q.shape[0], q.shape[1], num_q), dtype=torch.int32)
    indices = q.new_empty((q.shape[0], q.shape[1], num_q, num_k), dtype=torch.int32)
    return counts, indices


def _outputs(q, with_extras):
    out = torch.empty_like(q)
    lse = q.new_empty((q.shape[0] if with_extras else 0, q.shape[1], q.shape[2]),
                      dtype=torch.float32)
    counters = q.new_empty((q.shape[1] if with_extras else 0, 2), dtype=torch.int64)
    return out, lse, counters


@torch.library.register_fake("sparge::predict_block_mask")
def _predict_block_mask(q, k, attn_mask=None, key_lengths=None, key_block_pooled=None,
                        key_block_sim=None, key_block_mean=None, key_block_tokens=0,
                        key_block_k=64, **options):
    return _mask(q, k, options)


@torch.library.register_fake("sparge::block_sparse_attention")
def _block_sparse_attention(q, k, v, counts, indices, row_offsets=None, attn_mask=None,
                            key_lengths=None, *, with_extras=False, **options):
    return _outputs(q, with_extras)


@torch.library.register_fake("sparge::attention")
def _attention(q, k, v, attn_mask=None, key_lengths=None, key_block_pooled=None,
               key_block_sim=None, key_block_mean=None, key_block_tokens=0, key_block_k=64, *,
               with_extras=False, **options):
    out, lse, counters = _outputs(q, with_extras)
    if with_extras:
        counts, indices = _mask(q, k, options)
    else:  # the mask stays in the call's workspace (row chunks)
        counts = q.new_empty((0, 0, 0), dtype=torch.int32)
        indices = q.new_empty((0, 0, 0, 0), dtype=torch.int32)
    rows, heads = (q.shape[0], q.shape[1]) if with_extras else (0, 0)
    stage1 = q.new_empty((2, rows, heads), dtype=torch.float32)
    forced = q.new_empty((rows, heads), dtype=torch.int64)
    return out, lse, counts, indices, counters, stage1, forced


@torch.library.register_fake("sparge::attention_varlen")
def _attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **options):
    return torch.empty_like(q)


@torch.library.register_fake("sparge::permute_tokens")
def _permute_tokens(x, order, first, inverse):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.register_fake("sparge::hilbert_order")
def _hilbert_order(frames, height, width, device):
    return torch.empty((frames * height * width,), dtype=torch.int64, device=device)


@torch.library.register_fake("sparge::update_key_blocks")
def _update_key_blocks(k, pooled, sim, mean, block_k, tokens, build, take_mean=True):
    return None
