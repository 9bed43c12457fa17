// The single place where arguments are checked. Every public entry point calls these before
// any work; messages name the argument, the expected value and the value received.
#pragma once

#include "sparge/sparge.h"

namespace sparge::detail {

Status validate_options(const SparseOptions& opts, int64_t heads_q);
// q, k, v: ranks, shapes, GQA ratio, dtypes, devices, strides, head dim.
Status validate_qkv(const TensorView& q, const TensorView& k, const TensorView& v);
// o must look like q (same dtype, shape, device) and must not alias its own elements.
Status validate_output(const TensorView& o, const TensorView& q, const char* name = "o");
// The mask's geometry must match q/k and the options; host masks also get a content check.
Status validate_mask(const BlockMask& mask, const TensorView& q, const TensorView& k,
                     const SparseOptions& opts);
// The geometry alone, for masks that are outputs (Stage 1 writes them; their contents are junk),
// and a host compact mask's row offsets (they say where Stage 1 writes).
Status validate_mask_geometry(const BlockMask& mask, const TensorView& q, const TensorView& k,
                              const SparseOptions& opts);
// A host compact mask's row_offsets: from 0, nondecreasing (ok for a padded mask).
Status validate_mask_offsets(const BlockMask& host_mask);
// Counts, indices (and offsets) of a host mask: what attention may read.
Status validate_mask_contents(const BlockMask& host_mask);
// The attention mask (AttentionMask): dtype, device, broadcast shape, strides; host key_lengths
// are also range-checked. Messages name `attn_mask.<field>`.
Status validate_attn_mask(const AttentionMask& attn_mask, const TensorView& q,
                          const TensorView& k);
// Key blocks kept beside a KV cache against the cache's keys `k` (checked too, named "k"):
// pointers, device, shape, capacity for k.tokens, tokens within [0, k.tokens].
Status validate_key_blocks(const KeyBlocks& key_blocks, const TensorView& k);
// sparse_attention_varlen's packing: num_seqs >= 1, q, k, v and o of batch 1, each cu_seqlens
// array from 0, nondecreasing, ending at its tensor's tokens, keys for every sequence with
// queries, and no extras.lse (not taken yet). The tensors and options are validate()'s.
Status validate_varlen(const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& o, const int32_t* cu_seqlens_q,
                       const int32_t* cu_seqlens_k, int64_t num_seqs, const AttentionExtras& extras);

}  // namespace sparge::detail
