// Arguments and workspace layout of Stage 1 (block-mask prediction) on CUDA.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/backend.h"
#include "common/error_target.h"
#include "common/geometry.h"
#include "cuda/common/dense_mask.cuh"
#include "sparge/sparge.h"

namespace sparge::cuda {

constexpr int kMaxPredictHeads = 256;  // per-head thresholds travel inside the kernel parameters
// Longest mask row (key blocks) the selection sorts in one CTA's shared memory (16 bytes a slot);
// longer rows take the long-row selection (select_long.cuh).
constexpr int kMaxSortedKeyBlocks = 8192;
static_assert(kMaxSortedKeyBlocks == detail::kAutoSampledMaxKeyBlocks,
              "estimate auto turns pooled where sampled rows stop (common/backend.h)");
// Rows of more key blocks than this take the long-row selection where it serves them (the pooled
// estimate without the error target) although one CTA could sort them: on an H100 at 4096 key
// blocks (256K tokens, H 8) it took Stage 1 5.8-8.0 ms against 12.0-12.1 on smooth inputs (top-k
// 0.1, TopCdf 0.9), 7.1 / 12.7 against 12.1 / 12.1 on random ones, while from 768 to 2048 it
// ran between 17% faster (causal) and 12% slower (TopCdf, not causal) than the shared-memory
// sort (bench/results/2026-12-05_NVIDIA-H100_long-rows-threshold.jsonl).
constexpr int kSharedSortMaxKeyBlocks = 2048;
// Scratch of the long-row selection per chunk of rows: at most about this many bytes (8 per key
// block of a row: S̃ then P̃), at least one group of kScoreRowsPerCta rows.
constexpr std::size_t kLongRowChunkBytes = std::size_t(64) << 20;
// Ranks the long-row selection sorts at once in shared memory (a band, select_long.cuh): a power
// of two, more than 2 · kSelectThreads (topcdf.cuh) so that every band adds at least one rank.
constexpr int kLongRowBand = 2048;
constexpr int kKeyMeanChunk = 512;     // tokens per partial sum of the key mean (fixed order)
constexpr int kScoreRowsPerCta = 8;    // query blocks per CTA of the compressed-score kernel

// The error target's sampled rows per query block as its kernels store them: a whole number of
// 16-row mma tiles. make_problem raises sample_rows to max(sample_rows, min(16, block_q));
// workspace_size() may see the caller's options, so the same rule is applied here.
inline int error_target_row_stride(const SparseOptions& o) {
  const int rows = std::min(std::max(o.sample_rows, detail::kErrorTargetMinRows), o.block_q);
  return (rows + 15) / 16 * 16;
}
// Channels of a stored exact output row: head_dim rounded up to the mma's 8-column tiles.
inline int error_target_channel_stride(int64_t head_dim) { return int((head_dim + 7) / 8 * 8); }

// The sampled_rows estimate's plan (sampled_rows.cuh). A CTA holds 128 row slots (a 16-row mma
// unit per warp); a query block takes `slots` of them: its sampled rows rounded up to a power of
// two up to 16, else to whole units, so that no block straddles a unit unless it fills whole ones.
constexpr int kSampledRowSlotsPerCta = 128;
__host__ __device__ inline int sampled_row_slots(int sample_rows, int block_q) {
  const int c = sample_rows < block_q ? sample_rows : block_q;
  if (c > 16) return (c + 15) / 16 * 16;
  int s = 1;
  while (s < c) s <<= 1;
  return s;
}
// Query blocks one CTA estimates: at most 128 slots' worth (at least one block), spread evenly
// over the CTAs a head needs, so that a count that is not a multiple of 128 slots' worth (a row
// chunk's 86 of 256 blocks at 32K tokens) leaves no short last CTA (a block of more than 128
// slots runs its units as several groups of 8).
inline int sampled_row_blocks_per_cta(int num_q_blocks, int slots) {
  const int most = slots >= kSampledRowSlotsPerCta ? 1 : kSampledRowSlotsPerCta / slots;
  const int ctas = std::max(1, (num_q_blocks + most - 1) / most);
  return std::max(1, (num_q_blocks + ctas - 1) / ctas);
}
// Key splits of the estimate (gridDim.z), given `ctas`, its CTAs without a split, and a fill of
// two CTAs per SM of a 132-SM H100 / H200 (kFillCtas).
// Two passes: as many as bring `ctas` to kFillCtas, at most 8 and one key block each, and at
// most head_dim / slots (the splits' (max, sum) pairs live in pooled_q's space,
// PredictParams::sr_partial); rows combine their splits' sums, so the count is part of the result.
// One pass: every key block's entries have one writer whatever the split, so the count only
// shapes the grid: the one of at most 8 (and one key block each) with the least time by waves,
// ⌈ctas · s / kFillCtas⌉ / s, the fewest on ties (each split loads its rows' Q again). Where the
// two-pass rule floors, e.g. a row chunk's 96 CTAs at 32K tokens (2 splits, 192 CTAs: 73% of one
// wave), this takes 8 (768 CTAs, 2.9 waves); whole calls of 4K-32K tokens at 32 heads keep their
// counts.
inline int sampled_row_key_splits(int64_t ctas, int num_k_blocks, int slots, int head_dim,
                                  bool one_pass) {
  constexpr int64_t kFillCtas = 2 * 132;
  ctas = std::max<int64_t>(ctas, 1);
  if (!one_pass) {
    const int64_t cap = std::min<int64_t>({8, num_k_blocks, head_dim / slots});
    return int(std::max<int64_t>(1, std::min(cap, kFillCtas / ctas)));
  }
  const int cap = std::max(1, std::min(8, num_k_blocks));
  int best = 1;
  int64_t best_waves = (ctas + kFillCtas - 1) / kFillCtas;  // cost of s splits: waves(s) / s
  for (int s = 2; s <= cap; ++s) {
    const int64_t waves = (ctas * s + kFillCtas - 1) / kFillCtas;
    if (waves * best < best_waves * s) best = s, best_waves = waves;  // waves / s < best's
  }
  return best;
}

// PredictParams::key_side_needed's states.
enum KeySide : int32_t {
  kKeySideUnused = 0,  // no similar query block so far in the call: zero blocks, not similar
  kKeySideNeeded = 1,  // a similar query block in this row chunk: pool the keys now
  kKeySidePooled = 2,  // pooled by an earlier row chunk of the call: reuse
};

struct PredictParams {
  const void* q;
  const void* k;
  int64_t q_stride[3], k_stride[3];  // (batch, head, token) in elements
  int batch, heads_q, heads_kv, group, seq_q, seq_k, head_dim;
  int block_q, block_k, num_q_blocks, num_k_blocks;
  double scale;
  detail::KeyBand band;   // the keys each row sees (causal, window; geometry.h)
  // Per batch entry, keys key_lengths[b] .. seq_k - 1 are padding (AttentionMask::key_lengths;
  // null: none). Pooling and similarity read them (docs/method.md, "Attention masks"); no tile
  // they fill wholly is eligible or kept, and sampled rows do not see them.
  const int32_t* key_lengths;
  // A dense attention mask's tile classes (tile_class null: no dense mask): a tile it hides
  // wholly is neither eligible nor kept (docs/method.md, "Attention masks").
  DenseMaskView attn_mask;
  bool topk;              // false: TopCdf
  // The selection keeps every visible tile (detail::selection_keeps_every_tile): one kernel
  // writes that mask, nothing reads q or k.
  bool keep_every_tile;
  // km, pooled_q, sim_q, pooled_kt and sim_k are already written (the quantization pass pooled
  // the blocks while it read q and k: quantize/pool_tile.cuh); the launcher starts at the scores.
  bool pooled_by_pass;
  // Key blocks kept beside a KV cache (KeyBlocks) hold Stage 1's key side: pooled_kt and sim_k
  // point into them (rows of kt_pitch = their capacity in blocks), and the launcher skips the
  // key mean and pooling.
  bool keys_given;
  int kt_pitch;  // blocks per row of pooled_kt and sim_k: num_k_blocks, or the key blocks' capacity
  // pool_blocks<k> pools key blocks key_block_first + blockIdx.x (append_key_blocks starts at
  // the last incomplete block); 0 in Stage 1.
  int key_block_first;
  bool sampled_rows;      // estimate sampled_rows: `scores` holds block masses, not S̃
  // With key splits, pass 1's (max, sum) per sampled row: [batch·heads_q, nq·slots, splits], in
  // pooled_q's space (slots · splits ≤ head_dim; pooled_q is not read again in that mode).
  float2* sr_partial;
  // sampled_rows_one_pass: each sampled row's log2-sum-exp over each key block (its scores in
  // log2 units), [batch·heads_q, nq·slots, nk] (entries of the rows' allowed key blocks only).
  float* sr_tile_lse;
  bool sr_one_pass;
  // The device runs the attention's wgmma kernels (an sm_90 GPU, a build with sm_90a code, no
  // SPARGE_CUDA_KERNEL=sm80) and q's and k's rows are whole 16-byte chunks: the sampled_rows
  // estimate runs on wgmma too where its other limits allow (sampled_rows_sm90.cuh).
  bool wgmma;
  int sample_rows;
  bool attention_sink;
  bool per_head;          // thresholds below are per query head, else [0] for every head
  float sim_threshold[kMaxPredictHeads];
  float select_value[kMaxPredictHeads];  // τ (TopCdf) or κ (TopK)
  // Error target (target_error > 0; error_target.cuh): v, the target, and Stage1Stats outputs.
  const void* v;
  int64_t v_stride[3];
  bool error_target;
  double target_error;
  float* stat_select_value;  // [batch·heads_q] or null
  float* stat_error;         // [batch·heads_q] or null
  int64_t* stat_forced;      // [batch·heads_q] or null (zeroed by the launcher, then summed)
  bool add_to_forced;        // row chunks after the first: stat_forced is summed into, not zeroed
  int32_t* mask_counts;
  int32_t* mask_indices;
  // A compact output mask's row offsets (BlockMask::row_offsets; null: padded), and where the
  // first row that keeps more key blocks than its slots is recorded (MaskRowOut; workspace).
  const int64_t* mask_row_offsets;
  unsigned long long* mask_overflow;
  // Workspace (doubles): key-mean partial sums and mean, pooled blocks, similarities, scores.
  double* km_partial;  // [batch·heads_kv, chunks, D]
  double* km;          // [batch·heads_kv, D]
  double* pooled_q;    // [batch·heads_q, nq, D]
  double* sim_q;       // [batch·heads_q, nq]
  double* pooled_kt;   // [batch·heads_kv, D, nk] (transposed: the score kernel reads along nk)
  double* sim_k;       // [batch·heads_kv, nk]
  // Per (batch, kv head), a KeySide state. Where no query block of a kv head's heads is similar,
  // every mask row of those heads is computed whole (the gate), so the key mean and the key
  // blocks' pooling are skipped: on inputs with no similar block (random ones) that is most of
  // Stage 1's reading. The key side depends on all the keys only, so the row chunks of one call
  // (common/row_chunks.h) pool it once: the first chunk zeroes the states (first_row_chunk),
  // pool_blocks<q> marks kNeeded where a block is similar and the key side is still unused, the
  // key kernels run for kNeeded, and where chunks follow key_side_pooled turns kNeeded into
  // kPooled, which they reuse (the workspace keeps the key side at the same offsets for every
  // chunk). Null: the key side always runs.
  int32_t* key_side_needed;
  bool first_row_chunk;   // the call's first (or only) row chunk: the key side starts unused
  bool later_row_chunks;  // row chunks of the call follow this one: they reuse its key side
  double* scores;      // [batch·heads_q, nq, nk] = scale · p_q · p_k, or the sampled rows' mass
  double* cand_err;    // error target: [batch·heads_q, nq, kErrorTargetCandidates] Σ_r ‖o_g − o‖₁
  double* cand_norm;   // error target: [batch·heads_q, nq] Σ_r ‖o‖₁
  double* head_tau;    // error target: [batch·heads_q] chosen τ; > 1 keeps every allowed tile
  // Error target, from error_target_sample to error_target_rows (error_target_sample.cuh):
  float* et_row_max;   // [batch·heads_q, nq, et_rows] each sampled row's max score (log2 units)
  float* et_exact;     // [batch·heads_q, nq, et_rows, et_channels] its exact output (normalized)
  int et_rows;         // error_target_row_stride
  int et_channels;     // error_target_channel_stride
  // The long-row selection (uses_long_rows; select_long.cuh), per chunk of lr_chunk_rows rows:
  double* lr_scores;  // [lr_chunk_rows, nk] S̃ (compressed_scores), then P̃ (-1: not eligible)
  int lr_chunk_rows;  // a multiple of kScoreRowsPerCta
  int lr_band;        // ranks sorted at once (long_row_band)
};

// The overflow word of a compact output (PredictParams::mask_overflow): the row in the high bits,
// its kept count (saturated) in the low kOverflowCountBits; all ones when no row overflowed, so
// that atomicMin keeps the first row.
constexpr int kOverflowCountBits = 24;

#if defined(__CUDACC__)  // device helpers (host translation units include the struct only)
// Where Stage 1 writes mask row `row`: the padded row's num_k_blocks slots, or a compact row's
// (mask_row_offsets). A row that keeps more blocks than its slots is written as far as they go,
// its count is left unwritten and the first such row is recorded (the CPU's rule: the call
// fails naming it).
struct MaskRowOut {
  int32_t* indices;
  int64_t slots;
  __device__ MaskRowOut(const PredictParams& p, int64_t row) {
    const int64_t begin = p.mask_row_offsets ? p.mask_row_offsets[row] : row * p.num_k_blocks;
    slots = p.mask_row_offsets ? p.mask_row_offsets[row + 1] - begin : p.num_k_blocks;
    indices = p.mask_indices + begin;
  }
  __device__ void put(int64_t pos, int32_t key_block) const {
    if (pos < slots) indices[pos] = key_block;
  }
  __device__ void finish(const PredictParams& p, int64_t row, int64_t count) const {
    if (count <= slots) {
      p.mask_counts[row] = int32_t(count);
    } else {
      const int64_t saturated = count < (int64_t(1) << kOverflowCountBits)
                                    ? count : (int64_t(1) << kOverflowCountBits) - 1;
      atomicMin(p.mask_overflow,
                (static_cast<unsigned long long>(row) << kOverflowCountBits) |
                    static_cast<unsigned long long>(saturated));
    }
  }
};

// The keys batch entry b's rows may see: [0, key_end) (geometry.h's key_end).
__device__ __forceinline__ int64_t key_end_of(const PredictParams& p, int b) {
  return detail::key_end(p.key_lengths, b, p.seq_k);
}

// The key blocks query block i of batch entry b sees a key in: the band's allowed blocks cut at
// the entry's key length. Each row's visible keys are an interval and together they form one
// (geometry.h), so cutting it at key_end leaves one: passing key_end as the sequence end does it
// (the band itself keeps its alignment to seq_k). The tiles this drops are those the mask hides
// wholly (cpu/attn_mask.h's skipped class).
__device__ __forceinline__ detail::BlockRange visible_key_blocks(const PredictParams& p, int i,
                                                                 int b) {
  return detail::allowed_key_blocks(i, p.block_q, p.block_k, p.band, p.seq_q, key_end_of(p, b));
}

// Whether a dense attention mask hides tile (query block i, key block j) of (b, query head h)
// wholly: such a tile is not eligible, not forced by the gate, not the sink, never kept.
__device__ __forceinline__ bool tile_hidden(const PredictParams& p, int b, int h, int i, int j) {
  return p.attn_mask.tile_class != nullptr &&
         tile_class_of(p.attn_mask, b, h, i, j, p.num_q_blocks, p.num_k_blocks) == kTileSkipped;
}
#endif

// SPARGE_CUDA_LONG_ROWS=all sends every row the long-row selection serves there, not only those
// longer than kMaxSortedKeyBlocks (the GPU test's way to compare the two paths bit for bit).
inline const char* long_rows_switch() {
  const char* v = std::getenv("SPARGE_CUDA_LONG_ROWS");
  return v != nullptr ? v : "";
}

// Ranks per band of the long-row selection: kLongRowBand, or SPARGE_CUDA_LONG_ROW_BAND=n (a power
// of two from 2 · kSelectThreads + 1 up), which tests set low to walk many bands and ties.
inline int long_row_band() {
  const char* v = std::getenv("SPARGE_CUDA_LONG_ROW_BAND");
  const int n = v != nullptr ? std::atoi(v) : 0;
  const bool valid = n > 2 * 256 && n <= kLongRowBand && (n & (n - 1)) == 0;  // 256: kSelectThreads
  return valid ? n : kLongRowBand;
}

// Whether Stage 1's mask rows of `num_k_blocks` take the long-row selection: rows longer than
// one CTA sorts in shared memory, and rows it serves (the pooled estimate without the error
// target) of more than kSharedSortMaxKeyBlocks, or of any length with SPARGE_CUDA_LONG_ROWS=all.
inline bool uses_long_rows(int64_t num_k_blocks, const SparseOptions& o) {
  if (num_k_blocks > kMaxSortedKeyBlocks) return true;
  return detail::pooled_estimate_only(o) && (num_k_blocks > kSharedSortMaxKeyBlocks ||
                                             std::string(long_rows_switch()) == "all");
}

// Whether the sampled_rows estimate runs in one pass over the keys (SampledRowsPass::kTileSums,
// then sampled_rows_combine; sampled_rows.cuh) instead of two: where a query block's rows take
// at most 4 slots, so the per-row tile sums (4 bytes per slot and key block, sr_tile_lse) take
// at most twice the score map's 8 bytes per query block and key block. Not for the error target
// (its own kernels) nor the long rows (no score map).
inline bool sampled_rows_one_pass(int64_t num_k_blocks, const SparseOptions& o) {
  return o.estimate == EstimateMode::kSampledRows && o.target_error <= 0.0f &&
         sampled_row_slots(o.sample_rows, o.block_q) <= 4 && !uses_long_rows(num_k_blocks, o);
}

// Rows per chunk of the long-row selection: all of them up to kLongRowChunkBytes of scratch
// (the more rows a chunk has, the more CTAs its selection runs at once), in whole groups of
// kScoreRowsPerCta rows (compressed_scores' unit), at least one group.
inline int64_t long_row_chunk_rows(int64_t rows, int64_t num_k_blocks) {
  const int64_t fit =
      int64_t(kLongRowChunkBytes / (8 * std::size_t(std::max<int64_t>(num_k_blocks, 1))));
  const int64_t want = std::min(rows + kScoreRowsPerCta - 1, fit);
  return std::max<int64_t>(1, want / kScoreRowsPerCta) * kScoreRowsPerCta;
}

// Byte offsets of the workspace arrays, 256-byte aligned (the key side first: predict_workspace
// says why).
struct PredictWorkspace {
  std::size_t km_partial, km, pooled_kt, sim_k, key_side_needed, pooled_q, sim_q, scores,
      sr_tile_lse, cand_err, cand_norm, head_tau, et_row_max, et_exact, lr_scores, mask_overflow,
      total;
  int64_t lr_chunk_rows;  // 0 when the rows take the shared-memory selection
};

inline PredictWorkspace predict_workspace(const ProblemShape& s, const SparseOptions& o) {
  auto align = [](std::size_t x) { return (x + 255) / 256 * 256; };
  const std::size_t nq = (s.seq_q + o.block_q - 1) / o.block_q;
  const std::size_t nk = (s.seq_k + o.block_k - 1) / o.block_k;
  const std::size_t chunks = (s.seq_k + kKeyMeanChunk - 1) / kKeyMeanChunk;
  const std::size_t bhq = s.batch * s.heads_q, bhk = s.batch * s.heads_kv, d = s.head_dim;
  // The error target's arrays are sized only when it is on (workspace_size sees the options).
  const std::size_t et = o.target_error > 0.0f ? 1 : 0;
  const std::size_t et_rows = et * bhq * nq * std::size_t(error_target_row_stride(o));
  // Long rows: no score map, a chunk's scratch instead (linear in the key blocks).
  PredictWorkspace w{};
  const bool long_rows = uses_long_rows(int64_t(nk), o);
  const std::size_t lr = long_rows ? std::size_t(long_row_chunk_rows(int64_t(bhq * nq), int64_t(nk))) : 0;
  w.lr_chunk_rows = int64_t(lr);
  const std::size_t one_pass_slots =
      sampled_rows_one_pass(int64_t(nk), o) ? std::size_t(sampled_row_slots(o.sample_rows, o.block_q)) : 0;
  // (field, element count, element size).
  const struct {
    std::size_t* field;
    std::size_t count, size;
  } arrays[] = {
      // The key side first: its offsets do not depend on the query rows, so a call's row chunks
      // (shorter last chunk included) find the key side an earlier chunk pooled.
      {&w.km_partial, bhk * chunks * d, sizeof(double)},
      {&w.km, bhk * d, sizeof(double)},
      {&w.pooled_kt, bhk * d * nk, sizeof(double)},
      {&w.sim_k, bhk * nk, sizeof(double)},
      {&w.key_side_needed, bhk, sizeof(int32_t)},
      {&w.pooled_q, bhq * nq * d, sizeof(double)},
      {&w.sim_q, bhq * nq, sizeof(double)},
      {&w.scores, long_rows ? 0 : bhq * nq * nk, sizeof(double)},
      {&w.sr_tile_lse, bhq * nq * one_pass_slots * nk, sizeof(float)},
      {&w.cand_err, et * bhq * nq * detail::kErrorTargetCandidates, sizeof(double)},
      {&w.cand_norm, et * bhq * nq, sizeof(double)},
      {&w.head_tau, et * bhq, sizeof(double)},
      {&w.et_row_max, et_rows, sizeof(float)},
      {&w.et_exact, et_rows * std::size_t(error_target_channel_stride(s.head_dim)), sizeof(float)},
      {&w.lr_scores, lr * nk, sizeof(double)},
      {&w.mask_overflow, 1, sizeof(unsigned long long)},
  };
  std::size_t at = 0;
  for (const auto& a : arrays) {
    *a.field = at;
    at += align(a.count * a.size);
  }
  w.total = at;
  return w;
}

// Explicitly instantiated for __half and __nv_bfloat16 in predict.cu.
template <typename T>
Status launch_predict(const PredictParams& params, cudaStream_t stream);
// Key blocks of a KV cache (KeyBlocks, whose arrays params' km, pooled_kt and sim_k point at,
// num_k_blocks their capacity in blocks): with `new_mean` the key mean over all seq_k keys
// first (km_partial is scratch), then blocks [key_block_first, end_block) pooled with it.
template <typename T>
Status launch_key_blocks(const PredictParams& params, bool new_mean, int end_block,
                         cudaStream_t stream);



}  // namespace sparge::cuda
