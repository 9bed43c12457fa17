// Calls cut into head chunks (head_chunks.h): the chunks, the views, and the three entries'
// loops.
#include "common/head_chunks.h"

#include <algorithm>
#include <string>

namespace sparge::detail {
namespace {

// Heads [first, first + count) of batch entry b of a [B, H, N, D] view.
TensorView head_view(const TensorView& t, int64_t b, int64_t first, int64_t count) {
  TensorView s = t;
  const int64_t offset = b * t.stride_batch + first * t.stride_head;
  s.data = static_cast<char*>(t.data) + offset * int64_t(dtype_size(t.dtype));
  s.batch = 1;
  s.heads = count;
  if (t.capacity >= 0) s.capacity = t.capacity - offset;
  return s;
}

}  // namespace

bool needs_head_chunks(const SparseOptions& opts, int64_t heads_q, int64_t max_heads) {
  bool per_head = false;
#define SPARGE_IGNORE(...)
#define SPARGE_PER_HEAD(name, dflt, doc) per_head = per_head || opts.name.per_head != nullptr;
  SPARGE_OPTIONS(SPARGE_IGNORE, SPARGE_IGNORE, SPARGE_IGNORE, SPARGE_IGNORE, SPARGE_PER_HEAD)
#undef SPARGE_PER_HEAD
#undef SPARGE_IGNORE
  return per_head && heads_q > max_heads;
}

std::vector<HeadChunk> head_chunks(int64_t batch, int64_t heads_q, int64_t heads_kv,
                                   int64_t max_heads) {
  const int64_t group = heads_q / heads_kv;
  int64_t size = group <= max_heads ? max_heads / group * group : 1;
  if (group > max_heads)
    for (int64_t d = max_heads; d >= 1; --d)
      if (group % d == 0) {
        size = d;
        break;
      }
  std::vector<HeadChunk> chunks;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h0 = 0; h0 < heads_q; h0 += size) {
      const int64_t heads = std::min(size, heads_q - h0);
      const int64_t kv0 = h0 / group, kv_end = (h0 + heads - 1) / group + 1;
      chunks.push_back({b, h0, heads, kv0, kv_end - kv0});
    }
  return chunks;
}

Status chunk_views(const HeadChunk& c, const TensorView& q, const TensorView& k,
                   const TensorView& v, const TensorView* o, const AttentionMask& attn_mask,
                   const BlockMask* mask, const KeyBlocks* key_blocks,
                   const SparseOptions& opts, const AttentionExtras& extras, ChunkViews* out) {
  ChunkViews& r = *out;
  r.q = head_view(q, c.batch, c.head0, c.heads);
  r.k = head_view(k, c.batch, c.kv_head0, c.kv_heads);
  r.v = head_view(v, c.batch, c.kv_head0, c.kv_heads);
  if (o) r.o = head_view(*o, c.batch, c.head0, c.heads);

  r.attn_mask = attn_mask;
  if (attn_mask.data != nullptr) {  // broadcast axes (extent 1) stay as they are
    const int64_t offset = (attn_mask.batch > 1 ? c.batch * attn_mask.stride_batch : 0) +
                           (attn_mask.heads > 1 ? c.head0 * attn_mask.stride_head : 0);
    r.attn_mask.data = static_cast<const char*>(attn_mask.data) +
                       offset * int64_t(mask_dtype_size(attn_mask.dtype));
    r.attn_mask.batch = 1;
    if (attn_mask.heads > 1) r.attn_mask.heads = c.heads;
    if (attn_mask.capacity >= 0) r.attn_mask.capacity = attn_mask.capacity - offset;
  }
  if (attn_mask.key_lengths != nullptr) r.attn_mask.key_lengths = attn_mask.key_lengths + c.batch;

  if (mask != nullptr) {
    if (mask->compact())
      return Status::unsupported(
          "mask.row_offsets: a call of more than " + std::to_string(kCudaMaxParamHeads) +
          " query heads with per-head options runs in head chunks, which take padded masks only; "
          "pass a padded mask or one value for every head");
    const int64_t first_row = (c.batch * mask->heads + c.head0) * mask->num_q_blocks();
    r.mask = *mask;
    r.mask.counts = mask->counts + first_row;
    r.mask.indices = mask->indices + first_row * mask->num_k_blocks();
    r.mask.batch = 1;
    r.mask.heads = c.heads;
  }
  if (key_blocks != nullptr) {
    const KeyBlocks& kb = *key_blocks;
    const int64_t bh = c.batch * kb.heads_kv + c.kv_head0;
    r.key_blocks = kb;
    r.key_blocks.pooled = kb.pooled + bh * kb.head_dim * kb.max_blocks;
    r.key_blocks.sim = kb.sim + bh * kb.max_blocks;
    r.key_blocks.mean = kb.mean + bh * kb.head_dim;
    r.key_blocks.batch = 1;
    r.key_blocks.heads_kv = c.kv_heads;
  }

  r.opts = opts;
#define SPARGE_IGNORE(...)
#define SPARGE_HEAD_SLICE(name, dflt, doc) \
  if (opts.name.per_head != nullptr) r.opts.name.per_head = opts.name.per_head + c.head0;
  SPARGE_OPTIONS(SPARGE_IGNORE, SPARGE_IGNORE, SPARGE_IGNORE, SPARGE_IGNORE, SPARGE_HEAD_SLICE)
#undef SPARGE_HEAD_SLICE
#undef SPARGE_IGNORE

  // Outputs: lse [B, Hq, Nq], pv_counters [Hq, 2] (accumulated), stats [B, Hq].
  const int64_t row = c.batch * q.heads + c.head0;
  r.extras = extras;
  if (extras.lse) r.extras.lse = extras.lse + row * q.tokens;
  if (extras.pv_counters) r.extras.pv_counters = extras.pv_counters + c.head0 * 2;
  if (extras.stage1.select_value) r.extras.stage1.select_value = extras.stage1.select_value + row;
  if (extras.stage1.error_estimate)
    r.extras.stage1.error_estimate = extras.stage1.error_estimate + row;
  if (extras.stage1.forced_tiles) r.extras.stage1.forced_tiles = extras.stage1.forced_tiles + row;
  return Status::ok();
}

namespace {

// Runs `call(views)` for every chunk; a chunk's refusal names its heads.
template <typename Call>
Status for_each_chunk(const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView* o, const AttentionMask& attn_mask, const BlockMask* mask,
                      const KeyBlocks* key_blocks, const SparseOptions& opts,
                      const AttentionExtras& extras, int64_t max_heads, Call call) {
  if (max_heads < 1) return Status::invalid("max_heads must be >= 1");
  for (const HeadChunk& c : head_chunks(q.batch, q.heads, k.heads, max_heads)) {
    ChunkViews views;
    SPARGE_RETURN_IF_ERROR(
        chunk_views(c, q, k, v, o, attn_mask, mask, key_blocks, opts, extras, &views));
    const Status st = call(views);
    if (!st.is_ok())
      return st.with_context("batch entry " + std::to_string(c.batch) + ", query heads " +
                             std::to_string(c.head0) + ".." +
                             std::to_string(c.head0 + c.heads - 1) + ": ");
  }
  return Status::ok();
}

}  // namespace

Status sparse_attention_in_head_chunks(const TensorView& q, const TensorView& k,
                                       const TensorView& v, const AttentionMask& attn_mask,
                                       const KeyBlocks* key_blocks, const SparseOptions& opts,
                                       const TensorView& o, const AttentionExtras& extras,
                                       const ExecContext& ctx, const BlockMask* mask_out,
                                       int64_t max_heads) {
  return for_each_chunk(q, k, v, &o, attn_mask, mask_out, key_blocks, opts, extras, max_heads,
                        [&](const ChunkViews& c) {
                          const BlockMask* m = mask_out ? &c.mask : nullptr;
                          return key_blocks
                                     ? sparse_attention(c.q, c.k, c.v, c.attn_mask, c.key_blocks,
                                                        c.opts, c.o, c.extras, ctx, m)
                                     : sparse_attention(c.q, c.k, c.v, c.attn_mask, c.opts, c.o,
                                                        c.extras, ctx, m);
                        });
}

Status predict_block_mask_in_head_chunks(const TensorView& q, const TensorView& k,
                                         const TensorView& v, const AttentionMask& attn_mask,
                                         const KeyBlocks* key_blocks, const SparseOptions& opts,
                                         const BlockMask& mask, const ExecContext& ctx,
                                         const Stage1Stats& stats, int64_t max_heads) {
  AttentionExtras extras;
  extras.stage1 = stats;
  return for_each_chunk(q, k, v, nullptr, attn_mask, &mask, key_blocks, opts, extras, max_heads,
                        [&](const ChunkViews& c) {
                          return key_blocks
                                     ? predict_block_mask(c.q, c.k, c.attn_mask, c.key_blocks,
                                                          c.opts, c.mask, ctx, c.extras.stage1)
                                     : predict_block_mask(c.q, c.k, c.v, c.attn_mask, c.opts,
                                                          c.mask, ctx, c.extras.stage1);
                        });
}

Status block_sparse_attention_in_head_chunks(const TensorView& q, const TensorView& k,
                                             const TensorView& v, const AttentionMask& attn_mask,
                                             const BlockMask& mask, const SparseOptions& opts,
                                             const TensorView& o, const AttentionExtras& extras,
                                             const ExecContext& ctx, int64_t max_heads) {
  return for_each_chunk(q, k, v, &o, attn_mask, &mask, nullptr, opts, extras, max_heads,
                        [&](const ChunkViews& c) {
                          return block_sparse_attention(c.q, c.k, c.v, c.attn_mask, c.mask,
                                                        c.opts, c.o, c.extras, ctx);
                        });
}

}  // namespace sparge::detail
