// Calls cut into groups of query heads, for a backend that holds per-head parameters in a
// bounded array (CUDA's kernel parameters hold kCudaMaxParamHeads thresholds per launch): a call
// with more query heads and per-head options runs as one call per (batch entry, head chunk) on
// views of the caller's tensors, mask, options and outputs. Nothing is copied; every chunk is the
// problem the backend would see for those heads, so the results are the whole call's.
#pragma once

#include <cstdint>
#include <vector>

#include "sparge/sparge.h"

namespace sparge::detail {

// CUDA's bound (cuda/predict/params.h kMaxPredictHeads, cuda/attention/params.h kMaxParamHeads).
constexpr int64_t kCudaMaxParamHeads = 256;

// Query heads [head0, head0 + heads) of batch entry `batch`, which read KV heads
// [kv_head0, kv_head0 + kv_heads).
struct HeadChunk {
  int64_t batch, head0, heads, kv_head0, kv_heads;
};

// Whether a call must be cut: some option holds one value per head and there are more query heads
// than `max_heads`.
bool needs_head_chunks(const SparseOptions& opts, int64_t heads_q, int64_t max_heads);

// The chunks: per batch entry, runs of whole KV-head groups of at most max_heads query heads, or,
// when one group alone is larger, the largest divisor of the group that fits (all in one KV head).
std::vector<HeadChunk> head_chunks(int64_t batch, int64_t heads_q, int64_t heads_kv,
                                   int64_t max_heads);

// The views of one chunk. `mask` and `key_blocks` may be null (then so are the views'); a compact
// mask cannot be cut (its row offsets would need rebasing): chunk_views refuses it by name.
struct ChunkViews {
  TensorView q, k, v, o;
  AttentionMask attn_mask;
  BlockMask mask;
  KeyBlocks key_blocks;
  SparseOptions opts;
  AttentionExtras extras;
};
Status chunk_views(const HeadChunk& c, const TensorView& q, const TensorView& k,
                   const TensorView& v, const TensorView* o, const AttentionMask& attn_mask,
                   const BlockMask* mask, const KeyBlocks* key_blocks,
                   const SparseOptions& opts, const AttentionExtras& extras, ChunkViews* out);

// The entries' chunked forms, which the public entries take on CUDA with kCudaMaxParamHeads
// (tests take them on the CPU with smaller bounds): the same arguments, one call per chunk.
Status sparse_attention_in_head_chunks(const TensorView& q, const TensorView& k,
                                       const TensorView& v, const AttentionMask& attn_mask,
                                       const KeyBlocks* key_blocks, const SparseOptions& opts,
                                       const TensorView& o, const AttentionExtras& extras,
                                       const ExecContext& ctx, const BlockMask* mask_out,
                                       int64_t max_heads);
Status predict_block_mask_in_head_chunks(const TensorView& q, const TensorView& k,
                                         const TensorView& v, const AttentionMask& attn_mask,
                                         const KeyBlocks* key_blocks, const SparseOptions& opts,
                                         const BlockMask& mask, const ExecContext& ctx,
                                         const Stage1Stats& stats, int64_t max_heads);
Status block_sparse_attention_in_head_chunks(const TensorView& q, const TensorView& k,
                                             const TensorView& v, const AttentionMask& attn_mask,
                                             const BlockMask& mask, const SparseOptions& opts,
                                             const TensorView& o, const AttentionExtras& extras,
                                             const ExecContext& ctx, int64_t max_heads);

}  // namespace sparge::detail
