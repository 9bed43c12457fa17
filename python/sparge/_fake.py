"""Fake (meta) kernels of the sparge ops: output shapes, dtypes and strides without running
anything, so torch.compile and FakeTensor tracing see the ops as ordinary graph nodes.

They mirror python/csrc/binding.cc: the output is allocated like q (empty_like keeps an NHD
view's strides), lse and the P·V counters are empty unless flags[WITH_EXTRAS] is set.
"""
import torch

from ._options import BLOCK_K, BLOCK_Q, WITH_EXTRAS


def _mask(q, k, flags):
    num_q = -(-q.shape[2] // flags[BLOCK_Q])
    num_k = -(-k.shape[2] // flags[BLOCK_K])
    counts = q.new_empty((q.shape[0], q.shape[1], num_q), dtype=torch.int32)
    indices = q.new_empty((q.shape[0], q.shape[1], num_q, num_k), dtype=torch.int32)
    return counts, indices


def _outputs(q, flags):
    extras = bool(flags[WITH_EXTRAS])
    out = torch.empty_like(q)
    lse = q.new_empty((q.shape[0] if extras else 0, q.shape[1], q.shape[2]), dtype=torch.float32)
    counters = q.new_empty((q.shape[1] if extras else 0, 2), dtype=torch.int64)
    return out, lse, counters


@torch.library.register_fake("sparge::predict_block_mask")
def _predict_block_mask(q, k, scalars, flags, per_head):
    return _mask(q, k, flags)


@torch.library.register_fake("sparge::block_sparse_attention")
def _block_sparse_attention(q, k, v, counts, indices, scalars, flags, per_head):
    return _outputs(q, flags)


@torch.library.register_fake("sparge::attention")
def _attention(q, k, v, scalars, flags, per_head):
    out, lse, counters = _outputs(q, flags)
    counts, indices = _mask(q, k, flags)
    return out, lse, counts, indices, counters


@torch.library.register_fake("sparge::hilbert_order")
def _hilbert_order(frames, height, width, device):
    return torch.empty((frames * height * width,), dtype=torch.int64, device=device)
