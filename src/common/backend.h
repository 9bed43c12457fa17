// The contract between the dispatcher (src/common/dispatch.cc) and the backends.
//
// Arguments reach a backend already validated: shapes agree, strides fit, options are in
// range, the mask geometry matches. A backend only checks what is specific to it (e.g. the
// CUDA backend's compiled head dims) and returns Status::unsupported naming the field.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "common/geometry.h"
#include "common/quant_layout.h"
#include "sparge/sparge.h"

namespace sparge::detail {

// One validated attention problem. `scale` is resolved (never 0).
struct Problem {
  TensorView q, k, v;
  ProblemShape shape;
  SparseOptions opts;
  float scale = 1.0f;
  // The caller's attention mask (empty: none); validated, on the tensors' device.
  AttentionMask attn_mask;
  // Key blocks kept beside a KV cache (null: none): Stage 1 reads them instead of pooling k.
  // Validated against k and the options; only the pooled estimate takes them.
  const KeyBlocks* key_blocks = nullptr;

  // A row chunk (row_chunks.h) is rows [row_offset, row_offset + shape.seq_q) of a call of
  // call_seq_q query rows (0: shape.seq_q, the whole call); its rows see the keys the call's do.
  int64_t row_offset = 0;
  int64_t call_seq_q = 0;

  // A chunk after the first: Stage 1 adds its per-head counts (Stage1Stats::forced_tiles) to
  // the earlier chunks' instead of writing them.
  bool adds_to_stage1_stats() const { return row_offset > 0; }

  // The keys each row sees (causal, window and their alignment; geometry.h).
  KeyBand band() const {
    return shift_rows(band_of(opts, call_seq_q > 0 ? call_seq_q : shape.seq_q, shape.seq_k),
                      row_offset);
  }

  static KeyBand band_of(const SparseOptions& o, int64_t seq_q, int64_t seq_k) {
    return key_band(o.causal, o.causal_align == CausalAlign::kBottomRight, o.window_left,
                    o.window_right, seq_q, seq_k);
  }
};

// Key blocks past which EstimateMode::kAuto takes the pooled map on every backend: CUDA's Stage 1
// ranks longer rows by the pooled map only (cuda/predict/params.h kMaxSortedKeyBlocks, asserted
// equal there), and a call's mask should not depend on the backend.
constexpr int64_t kAutoSampledMaxKeyBlocks = 8192;

// The estimate EstimateMode::kAuto stands for in a call of seq_q query rows and seq_k keys
// (`key_blocks`: the call takes k's side from KeyBlocks): sampled rows where a few rows per full
// query block stand for it (their Q·Kᵀ is sample_rows / block_q of the dense one), the pooled map
// where a block's rows are all the rows there are (a decode step would sample every row: a
// dense Q·Kᵀ, twice), where key blocks replace k (they hold the pooled map's side only) and past
// kAutoSampledMaxKeyBlocks key blocks. The public entries resolve it first, so that everything
// after them sees kPooled or kSampledRows.
inline SparseOptions resolve_estimate(const SparseOptions& o, int64_t seq_q, int64_t seq_k,
                                      bool key_blocks) {
  if (o.estimate != EstimateMode::kAuto) return o;
  SparseOptions r = o;
  // ⌈seq_k / block_k⌉ without seq_k + block_k − 1, which overflows for a seq_k that validation
  // is still to reject (workspace_size resolves before it validates).
  const bool sampled = seq_q >= o.block_q && !key_blocks && o.block_k > 0 &&
                       seq_k / o.block_k + (seq_k % o.block_k != 0) <= kAutoSampledMaxKeyBlocks;
  r.estimate = sampled ? EstimateMode::kSampledRows : EstimateMode::kPooled;
  return r;
}

// Whether Stage 1 ranks the key blocks by the pooled estimate alone: the mode that key blocks
// (KeyBlocks) serve and the CUDA long-row selection takes; sampled rows and the error target read
// k's rows.
inline bool pooled_estimate_only(const SparseOptions& o) {
  return o.estimate == EstimateMode::kPooled && o.target_error == 0.0f;
}

// Whether Stage 1's selection keeps every visible tile whatever the inputs say, so that the
// backends may write that mask without reading q and k: top-k with κ = 1 on every head (it keeps
// ⌊κ · allowed⌋ ≥ every eligible tile, and the similarity gate forces only tiles that are visible
// too), no error target, and no Stage1Stats asked for (the forced-tile count needs the
// similarities). issue 10: "Stage 1 skipped when the thresholds make the mask dense".
inline bool selection_keeps_every_tile(const Problem& p, const Stage1Stats& stats) {
  const SparseOptions& o = p.opts;
  if (o.select != SelectMode::kTopK || o.target_error > 0.0f) return false;
  if (stats.select_value || stats.error_estimate || stats.forced_tiles) return false;
  for (int64_t h = 0; h < (o.select_value.per_head ? p.shape.heads_q : 1); ++h)
    if (o.select_value.at(h) < 1.0f) return false;
  return true;
}

}  // namespace sparge::detail

namespace sparge::cpu {
// Exact reference (double accumulation), the oracle of every test.
// With opts.target_error > 0 it reads p.v; `stats` outputs may be null (host memory).
Status predict_block_mask(const detail::Problem& p, const BlockMask& mask,
                          const Stage1Stats& stats = {});
Status attention_reference(const detail::Problem& p, const BlockMask& mask, const TensorView& o,
                           const AttentionExtras& extras);
// Fast backend: same function, blocked + OpenMP + vectorized, float accumulation.
Status attention_fast(const detail::Problem& p, const BlockMask& mask, const TensorView& o,
                      const AttentionExtras& extras, int num_threads);
struct QuantizedInputs;
// The same with inputs already quantized (cpu/quantize.h; null: exact mode), for studies that
// quantize with another granularity than the backends' (bench/cpu/quant_error.cc).
Status attention_fast_with(const detail::Problem& p, const BlockMask& mask, const TensorView& o,
                           const AttentionExtras& extras, int num_threads,
                           const QuantizedInputs* quantized);
Status permute_tokens(const TensorView& in, const TensorView& out, const int64_t* order,
                      int64_t order_len, int64_t first_token, bool inverse);
// The key blocks (types.h: KeyBlocks) of blocks [first_block, ceil(k.tokens / block_k)) of k
// (validated host memory), smoothed by blocks.mean; with `new_mean` the mean is first taken
// over all of k's tokens (build). Sets blocks->tokens = k.tokens.
Status update_key_blocks(const TensorView& k, KeyBlocks* blocks, int64_t first_block,
                         bool new_mean);
}  // namespace sparge::cpu

namespace sparge::cuda {
// Implemented in src/cuda/ when built with CUDA, else by src/common/cuda_stub.cc.
int device_count();
std::string compiled_set();  // for build_info()
std::vector<int> compiled_head_dims();  // for cuda_head_dims()
std::size_t workspace_size(const ProblemShape& shape, const SparseOptions& opts);
// A dense attention mask's tile classes (attn_mask.data set): bytes past the 256-byte-aligned
// end of workspace_size(shape, opts), where every entry point below keeps them; 0 without one.
std::size_t tile_class_workspace_size(const ProblemShape& shape, const SparseOptions& opts,
                                      const AttentionMask& attn_mask);
// Stage 1 into `mask` (device memory); scratch from ctx.workspace.
Status predict_block_mask(const detail::Problem& p, const BlockMask& mask,
                          const ExecContext& ctx, const Stage1Stats& stats = {});
Status attention(const detail::Problem& p, const BlockMask& mask, const TensorView& o,
                 const AttentionExtras& extras, const ExecContext& ctx);
// Stage 1 into `mask`, then attention (extras.stage1 receives Stage 1's statistics); quantized
// calls fuse Stage 1's reading of q and k into the quantization pass where they can.
Status sparse_attention(const detail::Problem& p, const BlockMask& mask, const TensorView& o,
                        const AttentionExtras& extras, const ExecContext& ctx);
Status permute_tokens(const TensorView& in, const TensorView& out, const int64_t* order,
                      int64_t order_len, int64_t first_token, bool inverse,
                      const ExecContext& ctx);
// `rows` runs of `width` bytes from src (one every src_pitch bytes) to dst (every dst_pitch), on
// ctx's stream (device memory): a row chunk's lse rows into the call's.
Status copy_rows(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                 std::size_t width, std::size_t rows, const ExecContext& ctx);
// Key blocks (KeyBlocks, device memory) of blocks [first_block, ceil(k.tokens / block_k)) of
// k with Stage 1's kernels; with `new_mean` the mean over all of k first, in a scratch of
// key_blocks_workspace_size bytes from ctx.workspace. Sets kb->tokens = k.tokens.
Status update_key_blocks(const TensorView& k, KeyBlocks* kb, int64_t first_block, bool new_mean,
                         const ExecContext& ctx);
std::size_t key_blocks_workspace_size(int64_t batch, int64_t heads_kv, int64_t tokens,
                                      int64_t head_dim);

// The quantized modes' inputs on the device (what the quantized kernels read). Caller-allocated,
// element counts from detail::quantized_counts, layouts in common/quant_layout.h; the bytes equal
// cpu::quantize_inputs' (q, q_scale, k, k_scale, km, v8, v_scale) for the same granularity.
struct QuantizedBuffers {
  int8_t* q = nullptr;
  float* q_scale = nullptr;
  int8_t* k = nullptr;
  float* k_scale = nullptr;
  float* km = nullptr;
  uint8_t* v8 = nullptr;  // 16-byte aligned; null: no V codes or scales (kInt8), V not read
  float* v_scale = nullptr;
};
std::size_t quantize_workspace_size(const ProblemShape& shape);
// Scratch from ctx.workspace (256-byte aligned, quantize_workspace_size bytes); ctx.stream.
Status quantize_inputs(const detail::Problem& p, const QuantizedBuffers& out,
                       const detail::QuantGranularity& g, const ExecContext& ctx);
}  // namespace sparge::cuda
